-- harborctl test bed: Harbor's tables the double needs, as the first migration creates them.
CREATE TABLE harbor_user (user_id SERIAL PRIMARY KEY, username varchar(255) UNIQUE,
  email varchar(255), realname varchar(255), sysadmin_flag boolean DEFAULT false NOT NULL,
  creation_time timestamp DEFAULT CURRENT_TIMESTAMP);
INSERT INTO harbor_user (username, realname, sysadmin_flag)
  VALUES ('admin', 'system admin', true), ('anonymous', 'anonymous user', false);
CREATE TABLE project (project_id SERIAL PRIMARY KEY, owner_id int NOT NULL,
  name varchar(255) NOT NULL UNIQUE, creation_time timestamp DEFAULT CURRENT_TIMESTAMP,
  update_time timestamp DEFAULT CURRENT_TIMESTAMP, deleted boolean DEFAULT false NOT NULL,
  registry_id int);
INSERT INTO project (owner_id, name) SELECT user_id, 'library' FROM harbor_user
  WHERE username = 'admin';
CREATE TABLE repository (repository_id SERIAL PRIMARY KEY, name varchar(255) NOT NULL UNIQUE,
  project_id int NOT NULL, description text, pull_count int DEFAULT 0 NOT NULL,
  star_count int DEFAULT 0 NOT NULL, creation_time timestamp DEFAULT CURRENT_TIMESTAMP,
  update_time timestamp DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE artifact (id SERIAL PRIMARY KEY, project_id int NOT NULL, repository_id int,
  repository_name varchar(255) NOT NULL, digest varchar(255) NOT NULL, type varchar(255),
  media_type varchar(255), manifest_media_type varchar(255), size bigint,
  push_time timestamp DEFAULT CURRENT_TIMESTAMP, pull_time timestamp, extra_attrs text,
  annotations jsonb, CONSTRAINT unique_artifact UNIQUE (repository_id, digest));
CREATE TABLE audit_log (id SERIAL PRIMARY KEY, project_id int NOT NULL,
  operation varchar(20) NOT NULL, resource_type varchar(255) NOT NULL,
  resource varchar(1024) NOT NULL, username varchar(255) NOT NULL,
  op_time timestamp DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE schedule (id SERIAL PRIMARY KEY, vendor_type varchar(16), vendor_id int,
  cron varchar(64), callback_func_name varchar(128),
  creation_time timestamp DEFAULT CURRENT_TIMESTAMP);
