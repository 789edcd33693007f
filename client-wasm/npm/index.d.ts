export type {
  TaskStatus,
  TaskProgressDto,
  ConnectionState,
  TaskWebSocketClientOptions,
  ConnectInfo,
  DisconnectInfo,
  TaskPulseErrorKind,
  TaskPulseError,
  StompMessage,
  Position,
  SnapshotPart,
  ClientMessage,
  ServerMessage,
} from "./taskpulse_client.js";
import { TaskWebSocketClient } from "./taskpulse_client.js";
export { TaskWebSocketClient };
export default TaskWebSocketClient;
