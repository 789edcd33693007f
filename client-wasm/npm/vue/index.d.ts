import type { ComputedRef, MaybeRefOrGetter } from "vue";
import type {
  ConnectionState,
  TaskProgressDto,
  TaskPulseError,
  TaskWebSocketClient,
} from "../web/index.js";
import type { TaskPulseOptions } from "../connections.js";

export type { TaskPulseOptions };

export interface TaskPulse {
  /** The latest update of every task seen, by taskNo. */
  tasks: ComputedRef<Readonly<Record<string, TaskProgressDto>>>;
  /** "connecting", "connected", "reconnecting" or "disconnected" (also while no token). */
  state: ComputedRef<ConnectionState>;
  /** The last error, cleared once connected again. */
  error: ComputedRef<TaskPulseError | null>;
  /** The shared client, for subscribe()/publish(); undefined while there is no token. */
  client: ComputedRef<TaskWebSocketClient | undefined>;
  /** Starts the next reconnect attempt now. */
  retryNow(): void;
}

/**
 * Follows the tasks of the user whose `token` (or `getToken`) is in `options`; components
 * with the same options share one connection, closed when the last of them unmounts.
 */
export function useTaskPulse(
  options: MaybeRefOrGetter<TaskPulseOptions | null | undefined>,
): TaskPulse;

/** The latest update of one task, from the connection a `useTaskPulse` opened most recently. */
export function useTask(taskNo: MaybeRefOrGetter<string>): ComputedRef<TaskProgressDto | undefined>;
