-- The per-user message log behind seq/epoch, replay and the offline queue.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- A fresh database gets a fresh epoch: clients holding positions from another log
-- (a wiped data directory) are told to resynchronise.
INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(8))));

CREATE TABLE user_log (
    username     TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    path         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body         BLOB NOT NULL,
    PRIMARY KEY (username, seq)
) WITHOUT ROWID;

CREATE INDEX user_log_by_age ON user_log (at);
