import { StrictMode, version } from "react";
import { createRoot } from "react-dom/client";
import TaskMonitor from "./TaskMonitor.jsx";

// Which React this build runs (the React 18 build aliases react to react-18).
document.documentElement.dataset.react = version;
createRoot(document.querySelector("#root")).render(
  <StrictMode>
    <TaskMonitor />
  </StrictMode>,
);
