-- 2.11: artifact_type; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
ALTER TABLE artifact ADD COLUMN IF NOT EXISTS artifact_type varchar(255);
UPDATE artifact SET artifact_type = media_type WHERE artifact_type IS NULL;
