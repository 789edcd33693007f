//! Entry point for trunk: mounts the task monitor.

fn main() {
    taskpulse_frontend::run();
}
