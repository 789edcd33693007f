-- Result images live in the database, so that every server sharing it can serve them.
CREATE TABLE results (
    task_no    TEXT PRIMARY KEY,
    bytes      BLOB NOT NULL,
    stored_at  INTEGER NOT NULL
) WITHOUT ROWID;
