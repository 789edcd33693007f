-- Where a user had no subscriber when a notice was sent: the next plain SUBSCRIBE there
-- replays the log from `first_seq` (the seed's offline queue), also after a restart.
CREATE TABLE offline_marks (
    username  TEXT NOT NULL,
    path      TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    PRIMARY KEY (username, path)
) WITHOUT ROWID;
