-- The task a log entry is a change of (NULL for notices): a replay or a gap fill gives it
-- back as the message's coalesce key, which a share link's watchers are filtered by.
ALTER TABLE user_log ADD COLUMN task_no TEXT;
