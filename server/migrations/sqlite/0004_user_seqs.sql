-- Each user's last seq, numbered by storage in the transaction that stores an entry
-- (an upsert that locks the row, so concurrent writers of one user serialise).
CREATE TABLE user_seqs (
    username TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO user_seqs (username, seq) SELECT username, MAX(seq) FROM user_log GROUP BY username;
