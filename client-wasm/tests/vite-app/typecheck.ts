// Compiled with `tsc --noEmit` by cargo xtask test: the package's TypeScript types describe
// what the seed's users write, and reject what they must not.
import TaskWebSocketClient, {
  type ClientMessage,
  type ServerMessage,
  type ConnectionState,
  type DisconnectInfo,
  type StompMessage,
  type TaskProgressDto,
  type TaskPulseError,
} from "@taskpulse/client";

const seed = new TaskWebSocketClient("http://localhost:8081", "token");
const configured = new TaskWebSocketClient({
  url: "https://tasks.example.com",
  getToken: async () => "fresh",
  reconnect: { initialDelayMs: 500, maxDelayMs: 10_000, multiplier: 2, jitter: true },
  heartbeat: { incomingMs: 4000, outgoingMs: 4000 },
  connectionTimeoutMs: 5000,
  debug: true,
});

const unsubscribe: () => void = seed.onTaskUpdate((task: TaskProgressDto) => {
  const status: "created" | "queued" | "processing" | "completed" | "failed" = task.status;
  const progress: number = task.progress;
  const result: string | undefined = task.resultUrl;
  const position: number | undefined = task.queuePosition;
  console.log(status, progress, result, position);
});
unsubscribe();
seed.onError((error: TaskPulseError) => console.log(error.kind, error.stompMessage));
seed.onDisconnect((info: DisconnectInfo) => console.log(info.code, info.willReconnect));
seed.onConnect((info) => console.log(info.user, info.version));
const state: ConnectionState = configured.state;
const connected: Promise<void> = seed.connect();
const next: number | undefined = seed.nextRetryAt;
const tasks: Record<string, TaskProgressDto> = seed.tasks();
seed.subscribe("/topic/news", (message: StompMessage) => console.log(message.body));
seed.publish("/topic/chat.room", { text: "hi" });
seed.publish("/topic/chat.room", "hi", { "x-trace": "1" });
console.log(state, connected, next, tasks, seed.isConnected(), seed.stats().replayed);

// @ts-expect-error an unknown status is not a TaskStatus
const wrong: TaskProgressDto["status"] = "done";
// @ts-expect-error the url option is a string
new TaskWebSocketClient({ url: 8080, token: "t" });
// @ts-expect-error listeners receive task updates, not strings
seed.onTaskUpdate((task: string) => console.log(task));
console.log(wrong);

// The JSON protocol at /ws/json, for a page with a bare WebSocket.
const hello: ClientMessage = { type: "subscribe", channels: ["tasks"], resume: { epoch: "e", seq: 3 } };
// @ts-expect-error auth needs its token
const noToken: ClientMessage = { type: "auth" };
// @ts-expect-error not a message type
const unknown: ClientMessage = { type: "hello" };
function onServer(message: ServerMessage): string {
  switch (message.type) {
    case "task_progress":
      return `${message.data.taskNo} ${message.data.status} ${message.seq} ${message.snapshot?.count ?? 0}`;
    case "notification":
      return `${message.channel} ${message.seq ?? "-"}`;
    case "error":
    case "auth_error":
      return message.code;
    default:
      return message.type;
  }
}
console.log(hello, noToken, unknown, onServer({ type: "pong" }));
