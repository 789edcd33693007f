// The main entry for webpack 5 (its "webpack" export condition): webpack turns the glue's
// new URL(".wasm", import.meta.url) into an emitted asset, and would write this machine's
// path into the bundle for the main entry's Vite-only fallback, so this entry has none.
import init, { TaskWebSocketClient } from "./taskpulse_client.js";

await init();

export { TaskWebSocketClient };
export default TaskWebSocketClient;
