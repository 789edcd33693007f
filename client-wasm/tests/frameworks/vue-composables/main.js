// The Vue adapter as an app uses it: a board and a counter with the same options (one
// connection), rows reading one task each with useTask, and a button that unmounts them
// (the connection then closes).
import { computed, createApp, defineComponent, h, ref, watch } from "vue";
import { useTask, useTaskPulse } from "@taskpulse/client/vue";
import { BASE_URL } from "../page.js";

const options = () => ({ url: BASE_URL, token: localStorage.getItem("jwt_token") });
window.__rendered = {};

const TaskRow = defineComponent({
  props: { taskNo: { type: String, required: true } },
  setup(props) {
    const task = useTask(() => props.taskNo);
    watch(
      task,
      (now) => {
        const seen = (window.__rendered[props.taskNo] ??= []);
        if (now && seen[seen.length - 1] !== now.status) seen.push(now.status);
      },
      { immediate: true },
    );
    return () =>
      h("li", { class: "task", "data-task-no": props.taskNo, "data-status": task.value?.status },
        `${props.taskNo}: ${task.value?.status} ${task.value?.progress}%`);
  },
});

const Board = defineComponent({
  setup() {
    const { tasks, state, error } = useTaskPulse(options);
    return () =>
      h("section", [
        h("p", ["Connection: ", h("output", { id: "state" }, state.value)]),
        error.value ? h("p", { id: "error" }, `${error.value.kind}: ${error.value.message}`) : null,
        h("ul", Object.keys(tasks.value).map((taskNo) => h(TaskRow, { key: taskNo, taskNo }))),
      ]);
  },
});

const Counter = defineComponent({
  setup() {
    const { tasks } = useTaskPulse(options);
    const done = computed(() => Object.values(tasks.value).filter((t) => t.status === "completed").length);
    return () => h("p", ["Completed: ", h("output", { id: "completed" }, String(done.value))]);
  },
});

const App = defineComponent({
  setup() {
    const shown = ref(true);
    return () => [
      h("button", { id: "toggle", onClick: () => (shown.value = !shown.value) }, shown.value ? "hide" : "show"),
      shown.value ? h(Board) : null,
      shown.value ? h(Counter) : null,
    ];
  },
});

createApp(App).mount("#app");
