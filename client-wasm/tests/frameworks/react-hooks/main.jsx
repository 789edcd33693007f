// The React adapter as an app uses it: two components with the same options (one
// connection), rows reading one task each with useTask, in StrictMode (double mount in
// development), and a button that unmounts everything (the connection then closes).
import { StrictMode, useEffect, useState, version } from "react";
import { createRoot } from "react-dom/client";
import { useTask, useTaskPulse } from "@taskpulse/client/react";
import { BASE_URL } from "../page.js";

const options = () => ({ url: BASE_URL, token: localStorage.getItem("jwt_token") });
window.__rendered = {};

function TaskRow({ taskNo }) {
  const task = useTask(taskNo);
  useEffect(() => {
    const seen = (window.__rendered[taskNo] ??= []);
    if (task && seen[seen.length - 1] !== task.status) seen.push(task.status);
  }, [taskNo, task]);
  return (
    <li className="task" data-task-no={taskNo} data-status={task?.status}>
      {taskNo}: {task?.status} {task?.progress}%
    </li>
  );
}

function Board() {
  const { tasks, state, error } = useTaskPulse(options());
  return (
    <section>
      <p>Connection: <output id="state">{state}</output></p>
      {error && <p id="error">{error.kind}: {error.message}</p>}
      <ul>{Object.keys(tasks).map((taskNo) => <TaskRow key={taskNo} taskNo={taskNo} />)}</ul>
    </section>
  );
}

function Counter() {
  const { tasks } = useTaskPulse(options());
  const done = Object.values(tasks).filter((task) => task.status === "completed").length;
  return <p>Completed: <output id="completed">{done}</output></p>;
}

function App() {
  const [shown, setShown] = useState(true);
  return (
    <>
      <button id="toggle" onClick={() => setShown(!shown)}>{shown ? "hide" : "show"}</button>
      {shown && <Board />}
      {shown && <Counter />}
    </>
  );
}

// Which React this build runs (the React 18 build aliases react to react-18).
document.documentElement.dataset.react = version;
createRoot(document.querySelector("#root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
