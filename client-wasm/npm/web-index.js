// Plain ES modules (browsers, Vite, esbuild, webpack 5): the .wasm is fetched next to this
// file (new URL(..., import.meta.url), which bundlers turn into an asset) before the
// module's exports are used.
import init, { TaskWebSocketClient } from "./taskpulse_client.js";

await init();

export { TaskWebSocketClient };
export default TaskWebSocketClient;
