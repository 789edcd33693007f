// For bundlers that import .wasm as an ES module (webpack with asyncWebAssembly, Vite with
// vite-plugin-wasm). Anything else: use the package's main entry.
import { TaskWebSocketClient } from "./taskpulse_client.js";

export { TaskWebSocketClient };
export default TaskWebSocketClient;
