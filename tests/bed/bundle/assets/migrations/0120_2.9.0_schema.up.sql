-- 2.9: job queue status; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
CREATE TABLE IF NOT EXISTS job_queue_status (id SERIAL PRIMARY KEY,
  job_type varchar(256) NOT NULL UNIQUE, paused boolean NOT NULL DEFAULT false,
  update_time timestamp DEFAULT CURRENT_TIMESTAMP);
