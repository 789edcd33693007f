import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import TaskMonitor from "./TaskMonitor.jsx";

createRoot(document.querySelector("#root")).render(
  <StrictMode>
    <TaskMonitor />
  </StrictMode>,
);
