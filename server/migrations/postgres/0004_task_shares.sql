-- Share links: whoever holds a link's token may watch that one task. Only the token's
-- SHA-256 is kept; a task has at most one link.
CREATE TABLE task_shares (
    task_no    TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    id         TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
