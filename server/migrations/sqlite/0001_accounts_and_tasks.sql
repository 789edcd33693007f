-- Accounts, revoked tokens, tasks and their pushed history.
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    credits       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    task_no       TEXT NOT NULL UNIQUE,
    owner         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    request       TEXT NOT NULL,
    status        TEXT NOT NULL,
    progress      INTEGER NOT NULL,
    message       TEXT NOT NULL,
    result_url    TEXT,
    error_message TEXT,
    cost          INTEGER NOT NULL DEFAULT 0,
    executor      TEXT NOT NULL,
    external_ref  TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER
);

CREATE INDEX tasks_by_owner ON tasks (owner, id DESC);
CREATE INDEX tasks_unfinished ON tasks (status) WHERE status NOT IN ('completed', 'failed');

CREATE TABLE task_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_no TEXT NOT NULL REFERENCES tasks (task_no) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    dto     TEXT NOT NULL
);

CREATE INDEX task_events_by_task ON task_events (task_no, id);
