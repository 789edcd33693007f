// Plain ES modules (browsers, Vite, esbuild, webpack 5): the .wasm is fetched next to this
// file (new URL(..., import.meta.url), which bundlers turn into an asset) before the
// module's exports are used.
import init, { TaskWebSocketClient } from "./taskpulse_client.js";

// `vite dev` pre-bundles dependencies into node_modules/.vite/deps/ without their assets
// (vitejs/vite#8427), so the glue's URL points at a .wasm that is not there. From that
// folder the package's own copy is two levels up. (Built from parts, so that no bundler
// tries to resolve it at build time.)
const VITE_DEPS = "/node_modules/.vite/deps/";
const FROM_VITE_DEPS = ["..", "..", "@taskpulse", "client", "web", "taskpulse_client_bg.wasm"];
const prebundled = import.meta.url.includes(VITE_DEPS);
await init(prebundled ? { module_or_path: new URL(FROM_VITE_DEPS.join("/"), import.meta.url) } : undefined);

export { TaskWebSocketClient };
export default TaskWebSocketClient;
