"""harborctl test bed: a stand-in for harbor-core.

What it does like Harbor's core (reference/harbor-facts.md §6, §10):
* at start, waits for the database, then upgrades the schema the way golang-migrate does:
  no/empty ``schema_migrations`` -> create Harbor's tables (project 'library', admin user) and
  record this release's last migration; an older clean version -> migrate up to ours; a dirty
  version or one newer than ours -> exit 1 (docker restarts it, as Harbor's compose does);
* ``GET /api/v2.0/ping`` -> ``Pong``;
* ``GET /api/v2.0/health`` -> each component's REAL state (SQL ``SELECT 1`` on the database,
  HTTP GET on the registry, a TCP connect to the others), sorted by name;
* ``GET /api/v2.0/systeminfo`` -> ``harbor_version`` etc. only for an authenticated admin.
Everything else is 404. Only the Python standard library and psql are used.
"""

import base64
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime

VERSION = os.environ["HARBOR_VERSION"]            # v2.8.6
SCHEMA = int(os.environ["HARBOR_SCHEMA_VERSION"])
BUILD = os.environ.get("HARBOR_BUILD", "00000000")
DB = {
    "host": os.environ.get("POSTGRESQL_HOST", "postgresql"),
    "port": os.environ.get("POSTGRESQL_PORT", "5432"),
    "user": os.environ.get("POSTGRESQL_USERNAME", "postgres"),
    "name": os.environ.get("POSTGRESQL_DATABASE", "registry"),
}
REGISTRY_URL = os.environ.get("REGISTRY_URL", "http://registry:5000")
# name=host:port,... : the TCP services whose liveness health reports.
TARGETS = [t.split("=", 1) for t in os.environ.get("HARBOR_HEALTH_TARGETS", "").split(",") if t]
DB_WAIT_SECONDS = int(os.environ.get("HARBOR_CORE_DB_WAIT", "60"))

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations(version bigint not null primary key,
                                             dirty boolean not null);
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
"""


def log(msg: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} [INFO] [harbor-core stand-in] {msg}", flush=True)


def psql(sql: str, *, timeout: float = 10) -> str:
    """Run SQL through psql; the password goes through the environment, never argv."""
    env = dict(os.environ, PGPASSWORD=os.environ.get("POSTGRESQL_PASSWORD", ""),
               PGCONNECT_TIMEOUT="3")
    proc = subprocess.run(
        ["psql", "-h", DB["host"], "-p", DB["port"], "-U", DB["user"], "-d", DB["name"],
         "-v", "ON_ERROR_STOP=1", "-tAq", "-f", "-"],
        input=sql, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"psql exited {proc.returncode}")
    return proc.stdout.strip()


def wait_for_database() -> None:
    deadline = time.monotonic() + DB_WAIT_SECONDS
    for attempt in range(1, 1000):
        try:
            psql("SELECT 1;")
            return
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            if time.monotonic() > deadline:
                log(f"failed to connect to database: {exc}")
                sys.exit(1)
            log(f"failed to connect to database (attempt {attempt}), retry in 1s: {exc}")
            time.sleep(1)
    sys.exit(1)


def upgrade_schema() -> None:
    tables = psql("SELECT to_regclass('public.schema_migrations') IS NOT NULL;")
    rows = psql("SELECT version, dirty FROM schema_migrations;") if tables == "t" else ""
    if not rows:
        log(f"empty database: creating Harbor's schema at version {SCHEMA}")
        psql(f"BEGIN; {SCHEMA_SQL} DELETE FROM schema_migrations;"
             f" INSERT INTO schema_migrations VALUES ({SCHEMA}, false); COMMIT;")
        return
    version_text, dirty = rows.splitlines()[0].split("|")
    version = int(version_text)
    if dirty == "t":
        log(f'Failed to upgrade schema, error: "Dirty database version {version}. '
            'Fix and force version."')
        sys.exit(1)
    if version > SCHEMA:
        log(f'Failed to upgrade schema, error: "no migration found for version {version}"')
        sys.exit(1)
    if version < SCHEMA:
        log(f"upgrading schema from {version} to {SCHEMA}")
        psql(f"BEGIN; UPDATE schema_migrations SET version = {SCHEMA}, dirty = false; COMMIT;")
    else:
        log(f"schema is up to date (version {version})")


def check_database() -> str | None:
    try:
        psql("SELECT 1;", timeout=CHECK_TIMEOUT)
        return None
    except subprocess.TimeoutExpired:
        return "failed to check the health status: timeout"
    except RuntimeError as exc:
        return f"failed to check the health status: {exc}"


def check_registry() -> str | None:
    try:
        with urllib.request.urlopen(REGISTRY_URL + "/", timeout=3) as resp:
            return None if resp.status == 200 else f"unexpected status code: {resp.status}"
    except OSError as exc:
        return f"failed to check the health status: {exc}"


def check_tcp(address: str) -> str | None:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return None
    except OSError as exc:
        return f"failed to check the health status: {exc}"


CHECK_TIMEOUT = 4.0
POOL = ThreadPoolExecutor(max_workers=16)


def health() -> dict:
    """All checks at once, each bounded (a vanished container can stall DNS for seconds)."""
    checks = {"core": lambda: None, "database": check_database, "registry": check_registry}
    for name, address in TARGETS:
        checks[name] = lambda address=address: check_tcp(address)
    futures = {name: POOL.submit(check) for name, check in checks.items()}
    deadline = time.monotonic() + CHECK_TIMEOUT
    components = []
    for name in sorted(checks):
        try:
            error = futures[name].result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            error = "failed to check the health status: timeout"
        item = {"name": name, "status": "healthy" if error is None else "unhealthy"}
        if error is not None:
            item["error"] = error
        components.append(item)
    overall = all(c["status"] == "healthy" for c in components)
    return {"status": "healthy" if overall else "unhealthy", "components": components}


def is_admin(header: str | None) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return user == "admin" and password == os.environ.get("HARBOR_ADMIN_PASSWORD")


def systeminfo(admin: bool) -> dict:
    info = {"auth_mode": "db_auth", "primary_auth_mode": False, "self_registration": False,
            "banner_message": "", "oidc_provider_name": "", "authproxy_settings": None}
    if admin:
        info.update({
            "harbor_version": f"{VERSION}-{BUILD}",
            "external_url": os.environ.get("EXT_ENDPOINT", ""),
            "registry_url": os.environ.get("EXT_ENDPOINT", "").split("://", 1)[-1],
            "registry_storage_provider_name": "filesystem", "read_only": False,
            "has_ca_root": False, "project_creation_restriction": "everyone",
            "notification_enable": True,
            "current_time": datetime.now(UTC).isoformat()})
    return info


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "harbor-core-standin"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/api/v2.0/ping":
            self.reply(200, "Pong", "text/plain; charset=utf-8")
        elif path == "/api/v2.0/health":
            self.reply(200, json.dumps(health()), "application/json")
        elif path == "/api/v2.0/systeminfo":
            admin = is_admin(self.headers.get("Authorization"))
            self.reply(200, json.dumps(systeminfo(admin)), "application/json")
        else:
            body = {"errors": [{"code": "NOT_FOUND", "message": f"{path} not found"}]}
            self.reply(404, json.dumps(body), "application/json")

    def reply(self, status: int, body: str, ctype: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:  # one line per request, like a log driver
        log(f"{self.address_string()} {fmt % args}")


def main() -> None:
    # PID 1 in a container has no default SIGTERM action: exit promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"Harbor {VERSION} core stand-in starting (schema {SCHEMA})")
    wait_for_database()
    upgrade_schema()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    log("serving on :8080")
    server.serve_forever()


if __name__ == "__main__":
    main()
