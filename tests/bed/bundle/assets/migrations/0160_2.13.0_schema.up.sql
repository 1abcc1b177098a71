-- 2.13: extended audit log; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
CREATE TABLE IF NOT EXISTS audit_log_ext (id BIGSERIAL PRIMARY KEY, project_id int,
  operation varchar(50), resource_type varchar(255), resource varchar(1024),
  username varchar(255), op_time timestamp DEFAULT CURRENT_TIMESTAMP);
