// Types of connections.js that both adapters' declarations use.
import type { TaskWebSocketClientOptions } from "./web/index.js";

/** The client's options; `token` may be null or missing until the user has one. */
export type TaskPulseOptions = Omit<TaskWebSocketClientOptions, "token"> & { token?: string | null };
