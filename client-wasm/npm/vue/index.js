// `@taskpulse/client/vue`: composables over the package's TaskWebSocketClient, returning
// refs and cleaned up with the component (or effect scope) that called them. Components
// that pass the same options share one connection.
import { computed, getCurrentScope, onScopeDispose, shallowRef, toValue, watch } from "vue";
import { IDLE, connectionFor, keyOf, latestConnection, onAnyChange, use } from "../connections.js";

/**
 * Follows the tasks of the user whose `token` (or `getToken`) is in `options`: an object,
 * a ref or a getter (a token that changes reconnects). Returns refs
 * `{ tasks, state, error, client }` and `retryNow()`.
 */
export function useTaskPulse(options) {
  const snapshot = shallowRef(IDLE);
  const client = shallowRef(undefined);
  let stop = () => {};
  watch(
    () => keyOf(toValue(options)),
    (key) => {
      stop();
      stop = () => {};
      snapshot.value = IDLE;
      client.value = undefined;
      if (key === null) return;
      const read = () => (snapshot.value = connectionFor(key)?.snapshot ?? IDLE);
      stop = use(key, toValue(options), read);
      read();
      client.value = connectionFor(key)?.client;
    },
    { immediate: true },
  );
  if (getCurrentScope()) onScopeDispose(() => stop());
  return {
    tasks: computed(() => snapshot.value.tasks),
    state: computed(() => snapshot.value.state),
    error: computed(() => snapshot.value.error),
    client: computed(() => client.value),
    retryNow: () => client.value?.retryNow(),
  };
}

// One version counter for every useTask without options, bumped on any connection's change.
const version = shallowRef(0);
let counting = false;

/**
 * A computed ref of the latest update of task `taskNo` (a string, ref or getter), from the
 * connection a `useTaskPulse` opened most recently.
 */
export function useTask(taskNo) {
  if (!counting) {
    counting = true;
    onAnyChange(() => (version.value += 1));
  }
  return computed(() => {
    void version.value;
    return latestConnection()?.snapshot.tasks[toValue(taskNo)];
  });
}
