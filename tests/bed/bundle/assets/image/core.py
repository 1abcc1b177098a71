"""harborctl test bed: a stand-in for harbor-core.

What it does like Harbor's core (reference/harbor-facts.md §6, §10):
* at start, waits for the database, then migrates the schema as golang-migrate's ``m.Up()``
  does, from the ``NNNN_X.Y.Z_schema.up.sql`` files of THIS release's image
  (``/harbor/migrations/postgresql``, as Harbor's core image carries them): each newer file in
  turn, ``schema_migrations`` set to (N, dirty) before it and (N, clean) after; a file that
  fails leaves (N, dirty) and core exits 1 (docker restarts it); a dirty version, or one no
  file of this release names (a newer database), stops core with golang-migrate's message.
  Every migration adds something (a table, a column, an index) and re-builds the
  ``unique_schedule`` index, so duplicate schedule rows make it fail for real;
* ``/service/token`` and the ``/v2/`` front with Harbor's challenge (``v2auth.py``);
* ``GET /api/v2.0/ping`` -> ``Pong``;
* ``GET /api/v2.0/health`` -> each component's REAL state (SQL ``SELECT 1`` on the database,
  HTTP GET on the registry, a TCP connect to the others), sorted by name;
* ``GET /api/v2.0/systeminfo`` -> ``harbor_version`` etc. only for an authenticated admin.
Fault switches (tests; see ``fault``): ``/data/bed-faults/core-unhealthy``: core migrates, then
exits 1 at every start, so Harbor never becomes healthy; ``/data/bed-faults/health-unhealthy``:
while it exists, health reports a component ``bed-fault`` unhealthy (read at each request, so
a test can hold a health gate in its wait and let it pass later).
Everything else is 404. Only the Python standard library, psql and openssl are used.
"""

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

import v2auth

VERSION = os.environ["HARBOR_VERSION"]            # v2.8.6
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

MIGRATIONS_DIR = "/harbor/migrations/postgresql"
FAULTS_DIR = "/harbor-bed-faults"


def migrations() -> list[tuple[int, str]]:
    """(version, path) of ``NNNN_*.up.sql`` in this image, as golang-migrate lists them."""
    found = []
    for name in os.listdir(MIGRATIONS_DIR):
        if name.endswith(".up.sql") and name[:4].isdigit():
            found.append((int(name.split("_", 1)[0]), os.path.join(MIGRATIONS_DIR, name)))
    return sorted(found)


def fault(name: str) -> bool:
    """A fault switch the test dropped: ``/data/bed-faults/<name>`` on the host, naming the
    releases (``v2.15.2``, one a line) it applies to, or empty for every release."""
    try:
        with open(os.path.join(FAULTS_DIR, name), encoding="utf-8") as fh:
            wanted = fh.read().split()
    except OSError:
        return False
    return not wanted or VERSION in wanted


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


def set_version(version: int, dirty: bool) -> None:
    """golang-migrate's SetVersion: one row, replaced in a transaction."""
    psql(f"BEGIN; DELETE FROM schema_migrations; INSERT INTO schema_migrations VALUES "
         f"({version}, {'true' if dirty else 'false'}); COMMIT;")


def upgrade_schema() -> None:
    """golang-migrate's ``m.Up()``: each newer file in turn, version set dirty before it runs
    and clean after; a failing file stops with the version left dirty (no transaction)."""
    rows = psql("CREATE TABLE IF NOT EXISTS schema_migrations(version bigint not null primary "
                "key, dirty boolean not null); SELECT version, dirty FROM schema_migrations;")
    steps = migrations()
    versions = [v for v, _ in steps]
    current = 0
    if rows:
        version_text, dirty = rows.splitlines()[0].split("|")
        current = int(version_text)
        if dirty == "t":
            fatal(f'Failed to upgrade schema, error: "Dirty database version {current}. '
                  'Fix and force version."')
        if current not in versions:
            fatal(f'Failed to upgrade schema, error: "no migration found for version {current}"')
    pending = [(v, path) for v, path in steps if v > current]
    if not pending:
        log(f"schema is up to date (version {current})")
        return
    log(f"upgrading schema from {current} to {pending[-1][0]}")
    for version, path in pending:
        set_version(version, True)
        try:
            with open(path, encoding="utf-8") as fh:
                psql(fh.read(), timeout=600)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            fatal(f'Failed to upgrade schema, error: "migration failed: {exc} '
                  f'(details: {os.path.basename(path)})"')
        set_version(version, False)
    log(f"schema upgraded to {pending[-1][0]}")


def fatal(msg: str) -> None:
    """Log as Harbor's core does before it exits (docker restarts it)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} [FATAL] [harbor-core stand-in] {msg}", flush=True)
    sys.exit(1)


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
    if fault("health-unhealthy"):
        components.append({"name": "bed-fault", "status": "unhealthy",
                           "error": "harbor-bed fault health-unhealthy"})
    overall = all(c["status"] == "healthy" for c in components)
    return {"status": "healthy" if overall else "unhealthy", "components": components}


def is_admin(header: str | None) -> bool:
    creds = v2auth.basic_user(header)
    return creds is not None and v2auth.password_ok(creds)


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
        if path == "/v2" or path.startswith("/v2/"):
            v2auth.handle_v2(self)
        elif path == "/service/token":
            v2auth.handle_token(self)
        elif path == "/api/v2.0/ping":
            self.reply(200, "Pong", "text/plain; charset=utf-8")
        elif path == "/api/v2.0/health":
            self.reply(200, json.dumps(health()), "application/json")
        elif path == "/api/v2.0/systeminfo":
            admin = is_admin(self.headers.get("Authorization"))
            self.reply(200, json.dumps(systeminfo(admin)), "application/json")
        else:
            body = {"errors": [{"code": "NOT_FOUND", "message": f"{path} not found"}]}
            self.reply(404, json.dumps(body), "application/json")

    def do_v2(self) -> None:
        if self.path.startswith("/v2/"):
            v2auth.handle_v2(self)
        else:
            self.reply(405, json.dumps({"errors": [{"code": "METHOD_NOT_ALLOWED",
                                                    "message": self.command}]}),
                       "application/json")

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_v2  # noqa: N815

    def reply(self, status: int, body: str, ctype: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:  # one line per request, like a log driver
        log(f"{self.address_string()} {fmt % args}")


def main() -> None:
    # PID 1 in a container has no default SIGTERM action: exit promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"Harbor {VERSION} core stand-in starting (schema {migrations()[-1][0]})")
    wait_for_database()
    upgrade_schema()
    if fault("core-unhealthy"):
        fatal("failed to initialize the system: harbor-bed fault core-unhealthy")
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    log("serving on :8080")
    server.serve_forever()


if __name__ == "__main__":
    main()
