-- 2.6: data migrations; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
CREATE TABLE IF NOT EXISTS data_migrations (id SERIAL PRIMARY KEY, version int NOT NULL,
  creation_time timestamp DEFAULT CURRENT_TIMESTAMP);
