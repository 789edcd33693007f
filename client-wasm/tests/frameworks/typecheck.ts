// Compiled with `tsc --noEmit` by cargo xtask test: the React and Vue adapters' types describe
// what an app writes, and reject what it must not.
import type { ConnectionState, TaskProgressDto, TaskPulseError, TaskWebSocketClient } from "@taskpulse/client";
import { type TaskPulse, useTask, useTaskPulse } from "@taskpulse/client/react";
import { useTask as useVueTask, useTaskPulse as useVueTaskPulse } from "@taskpulse/client/vue";
import { ref } from "vue";

// React: a token that is not there yet is fine; the result is fully typed.
const token: string | null = localStorage.getItem("jwt_token");
const pulse: TaskPulse = useTaskPulse({ url: "https://tasks.example.com", token });
const state: ConnectionState = pulse.state;
const error: TaskPulseError | null = pulse.error;
const byNo: Readonly<Record<string, TaskProgressDto>> = pulse.tasks;
const client: TaskWebSocketClient | undefined = pulse.client;
pulse.retryNow();
useTaskPulse({ getToken: async () => "fresh", reconnect: { initialDelayMs: 500 } });
useTaskPulse(null);
const one: TaskProgressDto | undefined = useTask("T-1");
const other: TaskProgressDto | undefined = useTask("T-2", { token: "t" });
// @ts-expect-error: a misspelt option
useTaskPulse({ tokn: "t" });
// @ts-expect-error: the tasks a hook returns are read-only
pulse.tasks["T-1"] = one!;
// @ts-expect-error: useTask wants a task number
useTask(42);

// Vue: options as an object, a ref or a getter; refs back.
const vue = useVueTaskPulse(() => ({ url: "https://tasks.example.com", token }));
useVueTaskPulse(ref({ token: "t" }));
useVueTaskPulse({ token: null });
const vueState: ConnectionState = vue.state.value;
const vueError: TaskPulseError | null = vue.error.value;
const vueTasks: Readonly<Record<string, TaskProgressDto>> = vue.tasks.value;
const vueClient: TaskWebSocketClient | undefined = vue.client.value;
vue.retryNow();
const vueOne: TaskProgressDto | undefined = useVueTask(() => "T-1").value;
// @ts-expect-error: state is a computed ref, not writable
vue.state.value = "connected";
// @ts-expect-error: a misspelt option
useVueTaskPulse({ tokn: "t" });

console.log(state, error, byNo, client, other, vueState, vueError, vueTasks, vueClient, vueOne);
