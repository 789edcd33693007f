//! Installs what the commands need when it is missing, and says what it installs.
//!
//! Rust tools go through `rustup` and `cargo install`; system packages through `apt-get`
//! when running as root (otherwise the exact command is printed and the step fails).

use std::{
    env, fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{root, status};

pub(crate) const TRUNK_VERSION: &str = "0.21.14";
/// Debian packages the tests drive: a real browser and its driver, PostgreSQL and Redis.
pub(crate) const TEST_PACKAGES: [&str; 4] =
    ["chromium", "chromium-driver", "postgresql", "redis-server"];

/// The directory `cargo install` puts binaries in.
fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// Where `cargo install` put `name`, so that a PATH without that directory still works.
pub(crate) fn cargo_bin(name: &str) -> PathBuf {
    let installed = cargo_bin_dir().join(name);
    if installed.exists() { installed } else { PathBuf::from(name) }
}

/// The first line `program --version` prints, if it runs.
fn version_of(program: &PathBuf) -> Option<String> {
    let out = Command::new(program).arg("--version").stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) fn wasm_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        return Ok(());
    }
    status(
        Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]),
        "installing the wasm32-unknown-unknown target",
    )
}

/// The nightly toolchain the npm package is built with (`cargo xtask dist`): pinned, so the
/// package does not change with the day it is built. Nightly only for the standard library
/// rebuilt with `-Cpanic=immediate-abort` (docs/BENCHMARKS.md, "Package size").
pub(crate) const PACKAGE_NIGHTLY: &str = "nightly-2026-05-20";

/// Installs [`PACKAGE_NIGHTLY`] (minimal profile, plus the standard library's source that
/// `-Zbuild-std` compiles) unless it is there.
pub(crate) fn package_nightly() -> Result<(), String> {
    let sysroot = Command::new("rustup")
        .args(["run", PACKAGE_NIGHTLY, "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if sysroot.is_some_and(|root| root.join("lib/rustlib/src/rust/library/std").is_dir()) {
        return Ok(());
    }
    status(
        Command::new("rustup").args([
            "toolchain",
            "install",
            PACKAGE_NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
        &format!("installing {PACKAGE_NIGHTLY} with rust-src (for the npm package)"),
    )
}

/// Installs `krate` at `version` unless `bin --version` already reports that version.
fn cargo_tool(bin: &str, krate: &str, version: Option<&str>, locked: bool) -> Result<(), String> {
    let present = version_of(&cargo_bin(bin));
    let wanted = match (version, &present) {
        (_, None) => true,
        (Some(v), Some(found)) => !found.split_whitespace().any(|w| w == v),
        (None, Some(_)) => false,
    };
    if !wanted {
        return Ok(());
    }
    let mut install = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    install.args(["install", krate]);
    if let Some(v) = version {
        install.args(["--version", v]);
    }
    if locked {
        install.arg("--locked");
    }
    let label = format!("installing {krate} {} (cargo install)", version.unwrap_or("latest"));
    status(&mut install, &label)
}

pub(crate) fn trunk() -> Result<(), String> {
    cargo_tool("trunk", "trunk", Some(TRUNK_VERSION), true)
}

/// wasm-bindgen-cli at exactly the version in Cargo.lock (trunk --offline and the test
/// runner refuse any other). Not `--locked`: its lock file does not resolve here.
pub(crate) fn wasm_bindgen_cli() -> Result<(), String> {
    let version = locked_version("wasm-bindgen")?;
    cargo_tool("wasm-bindgen", "wasm-bindgen-cli", Some(&version), false)
}

pub(crate) fn nextest() -> Result<(), String> {
    cargo_tool("cargo-nextest", "cargo-nextest", None, true)
}

pub(crate) fn cargo_fuzz() -> Result<(), String> {
    cargo_tool("cargo-fuzz", "cargo-fuzz", None, true)
}

/// The version of `package` recorded in the workspace's Cargo.lock.
fn locked_version(package: &str) -> Result<String, String> {
    let lock = fs::read_to_string(root().join("Cargo.lock"))
        .map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            if let Some(version) = lines.next().and_then(|l| l.trim().strip_prefix("version = ")) {
                return Ok(version.trim_matches('"').to_owned());
            }
        }
    }
    Err(format!("{package} is not in Cargo.lock"))
}

/// Installs the Debian packages the tests need, or explains how when not root.
pub(crate) fn test_packages() -> Result<(), String> {
    debian(&TEST_PACKAGES)
}

/// Debian's RabbitMQ, for `cargo xtask load --rabbitmq` (not a test dependency).
pub(crate) fn rabbitmq() -> Result<(), String> {
    debian(&["rabbitmq-server"])
}

/// Installs those of `packages` that are missing.
fn debian(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !deb_installed(p)).collect();
    apt_install(&missing)
}

/// Node and npm, for the `@stomp/stompjs` interop suite; Debian's when none is on PATH.
pub(crate) fn node() -> Result<(), String> {
    let works = |program: &str| version_of(&PathBuf::from(program)).is_some();
    if works("node") && works("npm") {
        return Ok(());
    }
    apt_install(&["nodejs", "npm"])
}

fn apt_install(missing: &[&str]) -> Result<(), String> {
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "the tests need Debian packages that are missing; install them with:\n  \
             sudo apt-get update && sudo apt-get install -y {list}"
        ));
    }
    status(Command::new("apt-get").arg("update").arg("-q"), "apt-get update")?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(missing),
        &format!("installing {list} (apt-get)"),
    )
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `PATH` with cargo's bin directory first, for tools that look up `wasm-bindgen` by name.
pub(crate) fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs = vec![cargo_bin_dir()];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(dirs).unwrap_or_default()
}
