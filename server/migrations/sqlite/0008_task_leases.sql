-- Several nodes: which node runs each unfinished task, until when. A node renews the leases
-- of its tasks; another takes over a task whose lease expired (its node died).
CREATE TABLE task_leases (
    task_no TEXT PRIMARY KEY,
    node    TEXT NOT NULL,
    until   INTEGER NOT NULL
);
