import type {
  ConnectionState,
  TaskProgressDto,
  TaskPulseError,
  TaskWebSocketClient,
} from "../web/index.js";
import type { TaskPulseOptions } from "../connections.js";

export type { TaskPulseOptions };

export interface TaskPulse {
  /** The latest update of every task seen, by taskNo (a new object on every change). */
  tasks: Readonly<Record<string, TaskProgressDto>>;
  /** "connecting", "connected", "reconnecting" or "disconnected" (also while no token). */
  state: ConnectionState;
  /** The last error, cleared once connected again. */
  error: TaskPulseError | null;
  /** Starts the next reconnect attempt now. */
  retryNow(): void;
  /** The shared client, for subscribe()/publish(); undefined while there is no token. */
  client: TaskWebSocketClient | undefined;
}

/**
 * Follows the tasks of the user whose `token` (or `getToken`) is in `options`; components
 * with the same options share one connection. Null options, or no token yet: disconnected.
 */
export function useTaskPulse(options: TaskPulseOptions | null | undefined): TaskPulse;

/**
 * The latest update of one task; from `options`' connection, else from the connection a
 * `useTaskPulse` opened most recently.
 */
export function useTask(
  taskNo: string,
  options?: TaskPulseOptions | null,
): TaskProgressDto | undefined;
