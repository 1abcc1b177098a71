-- 2.0: artifact references; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
CREATE TABLE artifact_reference (id SERIAL PRIMARY KEY, parent_id int NOT NULL,
  child_id int NOT NULL, child_digest varchar(255) NOT NULL, platform varchar(255),
  urls varchar(1024), annotations jsonb,
  CONSTRAINT unique_reference UNIQUE (parent_id, child_id));
