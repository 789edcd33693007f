//! `cargo xtask dist`: the npm package `@taskpulse/client` in `client-wasm/pkg/`.
//!
//! The client is built once with the size profile (`wasm-release`, a pinned nightly for an
//! immediate-abort standard library: see [`compile`]), bound twice by
//! wasm-bindgen (`--target web` for plain ES modules and most bundlers, `--target bundler`
//! for those that import `.wasm` as a module), shrunk by wasm-opt from npm's `binaryen`
//! (Debian's is too old for this rustc's output), its JavaScript glue minified by esbuild,
//! and completed with the files in `client-wasm/npm/`. Prints the gzipped size of what a
//! browser downloads.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{cargo, install, root, status};

/// Files of `client-wasm/npm/` copied as they are: the React and Vue adapters and the
/// connections they share, the README and the CHANGELOG.
const PACKAGE_FILES: [&str; 8] = [
    "README.md",
    "CHANGELOG.md",
    "connections.js",
    "connections.d.ts",
    "react/index.js",
    "react/index.d.ts",
    "vue/index.js",
    "vue/index.d.ts",
];

/// The artefact cargo writes for the client crate.
const WASM_NAME: &str = "taskpulse_client";

pub(crate) fn run() -> Result<(), String> {
    let pkg = build()?;
    let sizes = measure(&pkg.join("web"))?;
    println!(
        "xtask: {} built: {} bytes of .wasm and JS, {} bytes gzipped (-9), {} with brotli (11)",
        pkg.display(),
        sizes.raw,
        sizes.gzipped,
        sizes.brotli
    );
    Ok(())
}

/// Builds the package and returns its directory.
pub(crate) fn build() -> Result<PathBuf, String> {
    install::wasm_bindgen_cli()?;
    install::node()?;
    compile()?;
    let wasm = root().join(format!("target/wasm32-unknown-unknown/wasm-release/{WASM_NAME}.wasm"));
    let npm = root().join("client-wasm/npm");
    let pkg = root().join("client-wasm/pkg");
    let _ = fs::remove_dir_all(&pkg);
    for target in ["web", "bundler"] {
        let out = pkg.join(target);
        status(
            Command::new(install::cargo_bin("wasm-bindgen"))
                .args(["--target", target, "--out-dir"])
                .arg(&out)
                .arg(&wasm),
            &format!("wasm-bindgen --target {target}"),
        )?;
        optimize(&out.join(format!("{WASM_NAME}_bg.wasm")))?;
        minify(&out)?;
        copy(&npm.join(format!("{target}-index.js")), &out.join("index.js"))?;
        if target == "web" {
            copy(&npm.join("webpack-index.js"), &out.join("webpack.js"))?;
        }
        copy(&npm.join("index.d.ts"), &out.join("index.d.ts"))?;
    }
    // The React and Vue adapters and the connections they share.
    for file in PACKAGE_FILES {
        let to = pkg.join(file);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        copy(&npm.join(file), &to)?;
    }
    let manifest = fs::read_to_string(npm.join("package.json")).map_err(|e| e.to_string())?;
    let manifest = manifest.replace("{{version}}", env!("CARGO_PKG_VERSION"));
    fs::write(pkg.join("package.json"), manifest).map_err(|e| e.to_string())?;
    Ok(pkg)
}

/// Compiles the client for the package with [`install::PACKAGE_NIGHTLY`], its standard
/// library rebuilt with `-Cpanic=immediate-abort`: no panic messages, formatting or source
/// locations in the `.wasm` (about 7 KB of 57 gzipped). With stable, saying so, when that
/// toolchain cannot be installed: the package works the same and is larger.
fn compile() -> Result<(), String> {
    const BUILD: [&str; 8] = [
        "build",
        "-p",
        "taskpulse-client",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-release",
    ];
    let nightly = install::PACKAGE_NIGHTLY;
    match install::package_nightly() {
        Ok(()) => status(
            Command::new("rustup")
                .args(["run", nightly, "cargo"])
                .args(BUILD)
                .arg("-Zbuild-std=std,panic_abort")
                .env("RUSTFLAGS", "-Zunstable-options -Cpanic=immediate-abort")
                .current_dir(root()),
            &format!("building the client for the npm package ({nightly}, immediate-abort std)"),
        ),
        Err(why) => {
            println!(
                "xtask: warning: {why}; building the npm package with the stable toolchain \
                 instead (the same package, about 7 KB larger gzipped)"
            );
            install::wasm_target()?;
            status(cargo().args(BUILD), "building the client for the npm package (stable)")
        }
    }
}

/// The dist tools from npm (`client-wasm/npm/tools`), installed on first use: binaryen's
/// `wasm-opt` and `esbuild`.
fn tool(name: &str) -> Result<PathBuf, String> {
    let tools = root().join("client-wasm/npm/tools");
    let bin = tools.join("node_modules/.bin").join(name);
    if !bin.exists() {
        status(
            Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&tools),
            "installing the dist tools (npm binaryen and esbuild)",
        )?;
    }
    Ok(bin)
}

/// `wasm-opt -Oz` from npm's binaryen. `--low-memory-unused`: Rust's wasm32 stack sits below
/// the data and grows down towards 0, so the first 1,024 bytes are reached only by a stack
/// overflow; `--converge` repeats the passes while they still shrink the module.
fn optimize(wasm: &Path) -> Result<(), String> {
    let wasm_opt = tool("wasm-opt")?;
    let before = fs::metadata(wasm).map_err(|e| e.to_string())?.len();
    // The features this rustc's wasm32 target emits by default.
    status(
        Command::new(&wasm_opt)
            .arg(wasm)
            .args([
                "-Oz",
                "--converge",
                "--low-memory-unused",
                "--strip-debug",
                "--strip-producers",
                "-o",
            ])
            .arg(wasm)
            .args([
                "--enable-bulk-memory",
                "--enable-mutable-globals",
                "--enable-nontrapping-float-to-int",
                "--enable-sign-ext",
                "--enable-reference-types",
                "--enable-multivalue",
            ]),
        &format!("wasm-opt -Oz {}", wasm.display()),
    )?;
    let after = fs::metadata(wasm).map_err(|e| e.to_string())?.len();
    println!("xtask: wasm-opt: {before} -> {after} bytes");
    Ok(())
}

/// Minifies wasm-bindgen's JavaScript in place with esbuild: its doc comments and long
/// names are most of its bytes, and the types live in the `.d.ts` beside it. Exports and
/// `new URL("….wasm", import.meta.url)` (which bundlers look for) are kept as they are.
fn minify(dir: &Path) -> Result<(), String> {
    let esbuild = tool("esbuild")?;
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let glue = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(WASM_NAME) && n.ends_with(".js"));
        if glue {
            status(
                Command::new(&esbuild)
                    .arg(&path)
                    .args(["--minify", "--format=esm", "--log-level=warning", "--allow-overwrite"])
                    .arg(format!("--outfile={}", path.display())),
                &format!("esbuild --minify {}", path.display()),
            )?;
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to).map(|_| ()).map_err(|e| format!("copy {}: {e}", from.display()))
}

/// Bytes a browser downloads for one entry: the `.wasm` and the JavaScript.
pub(crate) struct Sizes {
    pub(crate) raw: u64,
    pub(crate) gzipped: u64,
    pub(crate) brotli: u64,
}

/// Counts what a browser loads from one entry directory: the entry file, wasm-bindgen's glue
/// and the `.wasm` (not the other entries beside them).
pub(crate) fn measure(dir: &Path) -> Result<Sizes, String> {
    let mut sizes = Sizes { raw: 0, gzipped: 0, brotli: 0 };
    for file in ["index.js".to_owned(), format!("{WASM_NAME}.js"), format!("{WASM_NAME}_bg.wasm")] {
        let path = dir.join(file);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        sizes.raw += bytes.len() as u64;
        sizes.gzipped += gzipped_len(&bytes)?;
        sizes.brotli += brotli_len(&path)?;
    }
    Ok(sizes)
}

/// Brotli's length at quality 11 (what a server with precompressed `.br` files sends), from
/// Node's zlib: Debian's `brotli` is one more package to install for one number.
fn brotli_len(path: &Path) -> Result<u64, String> {
    let script = "const z = require('zlib'); process.stdout.write(String(z.brotliCompressSync(\
                  require('fs').readFileSync(process.argv[1]), { params: { \
                  [z.constants.BROTLI_PARAM_QUALITY]: 11 } }).length))";
    let out = Command::new("node")
        .args(["-e", script])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("brotli size of {}: {}", path.display(), out.status))
}

/// `gzip -9` output length (what a server with static compression sends).
fn gzipped_len(bytes: &[u8]) -> Result<u64, String> {
    let mut gzip = Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    let mut stdin = gzip.stdin.take().expect("piped stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = gzip.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    Ok(out.stdout.len() as u64)
}
