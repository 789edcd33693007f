// The same app (main.js) for everything that is not Vite, into dist/ beside Vite's build:
// webpack 5 (dist/webpack/, the .wasm an asset it emits), esbuild (dist/esbuild/; esbuild
// copies no assets, so the .wasm is put next to the bundle as the package README says),
// and no bundler at all (dist/plain/: the package's files served as they are, found
// through an import map by a <script type="module">).
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import webpack from "webpack";
import { build } from "esbuild";

const HERE = dirname(fileURLToPath(import.meta.url));
const DIST = join(HERE, "dist");
const PACKAGE_WEB = dirname(createRequire(import.meta.url).resolve("@taskpulse/client"));

/** Vite's index.html with its script replaced by `script` (and the title by `title`). */
function page(title, script) {
  return readFileSync(join(HERE, "index.html"), "utf8")
    .replace(/<title>.*<\/title>/, `<title>@taskpulse/client, ${title}</title>`)
    .replace(/<script type="module" src="\.\/main\.js"><\/script>/, script);
}

async function withWebpack() {
  const out = join(DIST, "webpack");
  const stats = await new Promise((resolve, reject) =>
    webpack(
      { mode: "production", context: HERE, entry: "./main.js", output: { path: out, filename: "main.js" } },
      (error, result) => (error ? reject(error) : resolve(result)),
    ),
  );
  if (stats.hasErrors()) throw new Error(stats.toString({ all: false, errors: true }));
  writeFileSync(join(out, "index.html"), page("webpack 5", '<script src="./main.js"></script>'));
}

async function withEsbuild() {
  const out = join(DIST, "esbuild");
  await build({ entryPoints: [join(HERE, "main.js")], bundle: true, format: "esm", outdir: out, logLevel: "warning" });
  cpSync(join(PACKAGE_WEB, "taskpulse_client_bg.wasm"), join(out, "taskpulse_client_bg.wasm"));
  writeFileSync(join(out, "index.html"), page("esbuild", '<script type="module" src="./main.js"></script>'));
}

function withoutBundler() {
  const out = join(DIST, "plain");
  mkdirSync(out, { recursive: true });
  cpSync(PACKAGE_WEB, join(out, "taskpulse"), { recursive: true });
  cpSync(join(HERE, "main.js"), join(out, "main.js"));
  const imports = JSON.stringify({ imports: { "@taskpulse/client": "./taskpulse/index.js" } });
  const script = `<script type="importmap">${imports}</script>\n    <script type="module" src="./main.js"></script>`;
  writeFileSync(join(out, "index.html"), page("no bundler", script));
}

await withWebpack();
await withEsbuild();
withoutBundler();
console.log("built dist/webpack, dist/esbuild and dist/plain");
