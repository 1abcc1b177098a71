-- 2.4: schedule extra attributes; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
ALTER TABLE schedule ADD COLUMN IF NOT EXISTS extra_attrs json;
