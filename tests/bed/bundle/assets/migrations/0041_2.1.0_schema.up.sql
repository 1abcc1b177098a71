-- 2.1: preheat policies; schedule is reshaped, so its unique index is built again (the step that fails
-- on duplicate (vendor_type, vendor_id) rows, as Harbor's 2.2 migration did: goharbor/harbor#15088).
DROP INDEX IF EXISTS unique_schedule;
CREATE UNIQUE INDEX unique_schedule ON schedule (vendor_type, vendor_id);
CREATE TABLE p2p_preheat_policy (id SERIAL PRIMARY KEY, name varchar(255) NOT NULL,
  project_id int NOT NULL, enabled boolean, CONSTRAINT unique_p2p_preheat_policy UNIQUE (name, project_id));
