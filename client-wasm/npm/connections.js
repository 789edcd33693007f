// Shared connections for the React and Vue adapters: one TaskWebSocketClient per distinct
// options (URL, token, ...), however many components use it, with the state every
// component reads as one immutable snapshot. A connection's last user leaving closes it a
// moment later, so a component that unmounts and mounts again at once (React StrictMode,
// a route re-entered, a token-less render) keeps the same connection and misses nothing.
// By name, so that each bundler picks its entry (export conditions).
import { TaskWebSocketClient } from "@taskpulse/client";

/** What a component sees while it has no connection (no options, or no token yet). */
export const IDLE = Object.freeze({ tasks: Object.freeze({}), state: "disconnected", error: null });

/** How long a connection nobody uses stays open, in ms. */
const LINGER_MS = 1000;

const connections = new Map();
const everyChange = new Set();
let latest = null;

// Functions in the options (getToken) count by identity.
const functionIds = new WeakMap();
let nextFunctionId = 0;

/**
 * The key of a connection's options, or null when they cannot connect (none, or neither
 * `token` nor `getToken`): components pass a token that arrives later without a special case.
 */
export function keyOf(options) {
  if (!options || (!options.token && typeof options.getToken !== "function")) return null;
  return JSON.stringify(options, (_name, value) => {
    if (typeof value !== "function") return value;
    if (!functionIds.has(value)) functionIds.set(value, `function#${nextFunctionId++}`);
    return functionIds.get(value);
  });
}

class Connection {
  constructor(key, options) {
    this.key = key;
    this.users = 0;
    this.listeners = new Set();
    this.closing = null;
    const { token, ...rest } = options;
    this.client = new TaskWebSocketClient(token ? { ...rest, token } : rest);
    this.snapshot = { tasks: Object.freeze({ ...this.client.tasks() }), state: this.client.state, error: null };
    this.client.onTaskUpdate((task) => {
      this.update({ tasks: Object.freeze({ ...this.snapshot.tasks, [task.taskNo]: task }) });
    });
    this.client.onStateChange((state) => {
      // A working connection clears the last error; otherwise the error stays on show.
      this.update(state === "connected" ? { state, error: null } : { state });
    });
    this.client.onError((error) => this.update({ error }));
    // Failures are reported through onError (and `error`); a refused token stops the client.
    this.client.connect().catch(() => {});
  }

  update(change) {
    this.snapshot = Object.freeze({ ...this.snapshot, ...change });
    for (const listener of this.listeners) listener();
    for (const listener of everyChange) listener();
  }

  close() {
    connections.delete(this.key);
    if (latest === this) latest = [...connections.values()].pop() ?? null;
    const client = this.client;
    client.disconnect().finally(() => client.free());
    for (const listener of everyChange) listener();
  }
}

/**
 * Uses the connection for `options` (opening it if it is the first user) and calls
 * `listener` on each change of its snapshot; returns the function that stops using it.
 */
export function use(key, options, listener) {
  let connection = connections.get(key);
  if (!connection) {
    connection = new Connection(key, options);
    connections.set(key, connection);
  }
  latest = connection;
  clearTimeout(connection.closing);
  connection.closing = null;
  connection.users += 1;
  connection.listeners.add(listener);
  for (const each of everyChange) each();
  let used = true;
  return () => {
    if (!used) return;
    used = false;
    connection.listeners.delete(listener);
    connection.users -= 1;
    if (connection.users === 0) {
      connection.closing = setTimeout(() => connection.users === 0 && connection.close(), LINGER_MS);
    }
  };
}

/** The connection for `key`, if one is open. */
export function connectionFor(key) {
  return key === null ? undefined : connections.get(key);
}

/** The connection opened (or used) most recently: what `useTask(taskNo)` reads. */
export function latestConnection() {
  return latest ?? undefined;
}

/** Calls `listener` on every change of any connection; returns the unsubscribe function. */
export function onAnyChange(listener) {
  everyChange.add(listener);
  return () => everyChange.delete(listener);
}
