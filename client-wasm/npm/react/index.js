// `@taskpulse/client/react`: hooks over the package's TaskWebSocketClient. Components that
// pass the same options share one connection; StrictMode's double mount reuses it.
import { useCallback, useRef, useSyncExternalStore } from "react";
import { IDLE, connectionFor, keyOf, latestConnection, onAnyChange, use } from "../connections.js";

/**
 * Follows the tasks of the user whose `token` (or `getToken`) is in `options` (the options
 * of `new TaskWebSocketClient(options)`); without a token it waits, disconnected.
 * Returns `{ tasks, state, error, retryNow, client }`.
 */
export function useTaskPulse(options) {
  const key = keyOf(options);
  const latestOptions = useRef(options);
  latestOptions.current = options;
  const subscribe = useCallback(
    (listener) => (key === null ? () => {} : use(key, latestOptions.current, listener)),
    [key],
  );
  const snapshot = useSyncExternalStore(subscribe, () => connectionFor(key)?.snapshot ?? IDLE);
  const client = connectionFor(key)?.client;
  const retryNow = useCallback(() => connectionFor(key)?.client.retryNow(), [key]);
  return { tasks: snapshot.tasks, state: snapshot.state, error: snapshot.error, retryNow, client };
}

/**
 * The latest update of task `taskNo` (undefined until one arrives), from the connection of
 * `options` if given, else from the connection a `useTaskPulse` opened most recently.
 * With `options` it opens that connection itself.
 */
export function useTask(taskNo, options) {
  const key = options === undefined ? null : keyOf(options);
  const latestOptions = useRef(options);
  latestOptions.current = options;
  const subscribe = useCallback(
    (listener) => (key === null ? onAnyChange(listener) : use(key, latestOptions.current, listener)),
    [key],
  );
  const read = () => {
    const connection = key === null ? latestConnection() : connectionFor(key);
    return connection?.snapshot.tasks[taskNo];
  };
  return useSyncExternalStore(subscribe, read);
}
