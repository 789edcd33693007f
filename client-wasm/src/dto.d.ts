/** A task's lifecycle: created -> queued -> processing -> completed | failed. */
export type TaskStatus = "created" | "queued" | "processing" | "completed" | "failed";

/** One task update, exactly as the server sends it on /user/queue/tasks-progress. */
export interface TaskProgressDto {
  taskNo: string;
  status: TaskStatus;
  /** 0..100 */
  progress: number;
  message: string;
  /** Set once completed. */
  resultUrl?: string;
  /** Set once failed. */
  errorMessage?: string;
  /** While queued: 1 = next to run. */
  queuePosition?: number;
}
