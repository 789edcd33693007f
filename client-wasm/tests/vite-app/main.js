// What a frontend team writes: import the package, log in, watch a task. The page is served
// by the TaskPulse server itself, so the API and /ws are on this origin.
import TaskWebSocketClient from "@taskpulse/client";

const log = (line) => (document.querySelector("#log").textContent += `${line}\n`);

async function api(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const json = await response.json();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${json.error}`);
  return json;
}

function render(task) {
  let item = document.getElementById(`task-${task.taskNo}`);
  if (!item) {
    item = document.createElement("li");
    item.id = `task-${task.taskNo}`;
    document.querySelector("#tasks").append(item);
  }
  item.dataset.status = task.status;
  item.textContent = `${task.taskNo.slice(0, 8)} ${task.status} ${task.progress}% ${task.message}`;
}

async function main() {
  const username = `vite${Math.floor(Math.random() * 1e9)}`;
  const { token } = await api("/api/auth/register", { username, password: "correct horse 9" });
  // The seed's constructor form: base URL and token.
  const client = new TaskWebSocketClient(location.origin, token);
  client.onStateChange((state) => (document.querySelector("#state").textContent = state));
  client.onTaskUpdate((task) => {
    log(`${task.status} ${task.progress}`);
    render(task);
  });
  client.onError((error) => log(`error ${error.kind}: ${error.message}`));
  await client.connect();
  const { taskNo } = await api("/api/tasks", { kind: "text-to-image", prompt: "vite" }, token);
  document.body.dataset.taskNo = taskNo;
}

main().catch((error) => {
  log(`failed: ${error.message}`);
  document.body.dataset.failed = "true";
});
