-- Retention (tasks.events_retention_s) deletes task events by age.
CREATE INDEX task_events_by_at ON task_events (at);
