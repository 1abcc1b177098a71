-- 2.10: password versions; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
ALTER TABLE harbor_user ADD COLUMN IF NOT EXISTS password_version varchar(16) DEFAULT 'sha256';
