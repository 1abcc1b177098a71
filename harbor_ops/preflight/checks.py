"""The individual preflight checks: small functions of a :class:`Context` (the site, one
host's probe facts, the inspected bundle) returning :class:`CheckResult` s.

They are pure (no I/O beyond reading the controller's certificate files), so each is
unit-tested over recorded probe facts; :mod:`harbor_ops.preflight.run` runs them per host,
applies ``--skip`` and builds the report. Why each threshold is what it is lives with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from harbor_ops.core.errors import UpgradePathError, UsageError
from harbor_ops.hosts import certs, facts
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.releases import planner
from harbor_ops.releases import versions as hv
from harbor_ops.releases.signature import verify_signature
from harbor_ops.releases.versions import Release
from harbor_ops.site.checks import is_hostname
from harbor_ops.site.model import Site

VERDICTS = ("pass", "warn", "fail", "skip")
MEM_SLACK = 0.9  # MemTotal of a "4 GB" machine is ~3.8 GiB (kernel reserves the rest)
BUNDLE_UNPACK_FACTOR = 3  # the .tgz, the image tarball inside it, and the loaded layers
BACKUP_FACTOR = 0.3  # a compressed pg_dump is roughly this fraction of the cluster on disk
HARBOR_CONTAINERS = frozenset({"nginx", "harbor-log", "harbor-core", "harbor-portal",
                               "harbor-db", "harbor-jobservice", "registry", "registryctl",
                               "redis", "harbor-exporter", "trivy-adapter"})
GIB = 1 << 30


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: str  # pass | warn | fail | skip
    reason: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Context:
    """Everything one host's checks read; ``facts`` is the probe's JSON."""

    site: Site
    host: str
    facts: dict[str, Any]
    bundle: bundle_mod.BundleInfo | None = None
    bundle_size: int | None = None

    @property
    def target(self) -> Release:
        """The release being installed: the bundle's when readable, else the site file's."""
        if self.bundle is not None and self.bundle.version is not None:
            try:
                return hv.release(self.bundle.version)
            except UsageError:
                pass
        return self.site.release


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"



def check_cpu(ctx: Context) -> CheckResult:
    n = ctx.facts.get("nproc")
    lo, rec = hv.HARDWARE["cpu_min"], hv.HARDWARE["cpu_rec"]
    if not isinstance(n, int):
        return CheckResult("cpu", "warn", "could not count CPUs")
    text = f"{n} CPU(s); Harbor needs {lo}, recommends {rec}"
    if n < lo:
        return CheckResult("cpu", "fail", text, f"give the host at least {lo} CPUs")
    if n < rec:
        return CheckResult("cpu", "warn", text, f"{rec} CPUs for production load")
    return CheckResult("cpu", "pass", text)


def check_memory(ctx: Context) -> CheckResult:
    kb = ctx.facts.get("mem_total_kb")
    lo, rec = hv.HARDWARE["mem_min_gb"], hv.HARDWARE["mem_rec_gb"]
    if not isinstance(kb, int):
        return CheckResult("memory", "warn", "could not read MemTotal from /proc/meminfo")
    gib = kb / (1 << 20)
    text = f"{gib:.1f} GiB RAM; Harbor needs {lo} GB, recommends {rec} GB"
    if gib < lo * MEM_SLACK:
        return CheckResult("memory", "fail", text, f"give the host at least {lo} GB")
    if gib < rec * MEM_SLACK:
        return CheckResult("memory", "warn", text, f"{rec} GB for production load")
    return CheckResult("memory", "pass", text)


def check_disk(ctx: Context) -> CheckResult:
    disk = ctx.facts.get("disk") or {}
    free, total, where = disk.get("free"), disk.get("total"), disk.get("path", "?")
    if not isinstance(free, int):
        return CheckResult("disk", "warn", "could not read free space of the data volume")
    db = ctx.facts.get("database") or {}
    db_size = int(db.get("size") or 0)
    if ctx.bundle_size is not None:
        images = ctx.bundle_size * BUNDLE_UNPACK_FACTOR
        img_text = f"images {_gib(images)} (bundle × {BUNDLE_UNPACK_FACTOR})"
    else:
        images = planner.IMAGE_TARBALL_BYTES * BUNDLE_UNPACK_FACTOR
        img_text = f"images ~{_gib(images)} (estimated, no --bundle)"
    backup = int(db_size * BACKUP_FACTOR)
    need = images + db_size + backup
    text = (f"{_gib(free)} free on {where}; needs {_gib(need)}: {img_text} + copy-mode "
            f"pg_upgrade {_gib(db_size)} (size of /data/database) + one backup {_gib(backup)}")
    if free < need:
        return CheckResult("disk", "fail", text,
                           f"free {_gib(need - free)} on {where} or grow the volume")
    min_gb = hv.HARDWARE["disk_min_gb"]
    if isinstance(total, int) and total < min_gb * 10**9 * MEM_SLACK:
        return CheckResult("disk", "warn", f"{text}; the volume is {_gib(total)}, Harbor "
                           f"documents {min_gb} GB minimum", "grow the data volume")
    return CheckResult("disk", "pass", text)


def _tool_version(run: dict[str, Any] | None) -> Version | None:
    if not run or run.get("rc") != 0:
        return None
    v = facts.version_of(run.get("out"))
    return Version("{}.{}.{}".format(*v)) if v else None


def _yymm(v: Version) -> str:
    """Docker numbers its releases YY.MM.patch: print 17.06.0, not 17.6.0."""
    return f"{v.major}.{v.minor:02d}.{v.micro}"


def check_docker(ctx: Context) -> CheckResult:
    r, run = ctx.target, ctx.facts.get("docker") or {}
    doc, enforced = _yymm(r.docker_documented_min), _yymm(hv.DOCKER_ENFORCED_MIN)
    v = _tool_version(run)
    if v is None:
        err = str(run.get("err", ""))
        if run.get("rc") == 127:
            return CheckResult("docker", "fail", "Docker Engine is not installed",
                               f"install Docker Engine >= {doc} (Harbor {r} documents it)")
        if "Cannot connect" in err or "daemon" in err:
            return CheckResult("docker", "fail", "Docker Engine is installed but not running",
                               "start it: systemctl start docker (or service docker start)")
        return CheckResult("docker", "fail", f"cannot read the Docker version: {err[:120]}",
                           "check `docker version` on the host")
    shown = _yymm(v)
    if v < hv.DOCKER_ENFORCED_MIN:
        return CheckResult("docker", "fail", f"Docker {shown} is older than {enforced}, which "
                           f"install.sh of Harbor {r} requires", f"upgrade Docker to >= {doc}")
    if v < r.docker_documented_min:
        return CheckResult("docker", "warn", f"Docker {shown} passes install.sh's {enforced} check "
                           f"but Harbor {r} documents >= {doc}", f"upgrade Docker to >= {doc}")
    return CheckResult("docker", "pass", f"Docker {shown} (Harbor {r} documents >= {doc})")


def check_compose(ctx: Context) -> CheckResult:
    """Judge the Compose that install.sh of THIS release will actually pick (harbor-facts §4)."""
    r = ctx.target
    v2 = _tool_version(ctx.facts.get("compose_v2"))
    v1 = _tool_version(ctx.facts.get("compose_v1"))
    eff = r.compose_v1_effective_min
    slow = [n for n, k in (("docker compose", "compose_v2"), ("docker-compose", "compose_v1"))
            if (ctx.facts.get(k) or {}).get("rc") == 124]
    if v1 is None and v2 is None and slow:  # a timeout is not "not installed"
        return CheckResult("compose", "fail", f"`{slow[0]} version` did not answer in time "
                           "on the host", "find what keeps the host busy, then run preflight "
                           "again")
    if r.compose_v2_accepted and v2 is not None:
        want = r.compose_v2_documented_min
        if want is not None and v2 < want:
            return CheckResult("compose", "warn", f"docker compose {v2} (install.sh does not "
                               f"check its version) but Harbor {r} documents >= {want}",
                               f"upgrade the docker compose plugin to >= {want}")
        return CheckResult("compose", "pass", f"docker compose {v2} (plugin; install.sh of "
                           f"Harbor {r} uses it)")
    if v1 is None:
        if v2 is not None:  # a release before 2.5.4: install.sh looks only for docker-compose
            return CheckResult("compose", "fail", f"only the docker compose plugin {v2} is "
                               f"installed; install.sh of Harbor {r} runs only `docker-compose`",
                               f"install docker-compose >= {eff}")
        want = r.compose_v2_documented_min
        return CheckResult("compose", "fail", "neither `docker compose` nor `docker-compose` "
                           "is installed", f"install the docker compose plugin >= {want}"
                           if want else f"install docker-compose >= {eff}")
    if v1.major >= 2:
        return CheckResult("compose", "warn", f"docker-compose is Compose v2 ({v1}); Harbor {r}'s "
                           "install.sh expects docker-compose v1", f"install docker-compose v1 "
                           f">= {eff}, or test the install on a staging host first")
    if v1 < hv.COMPOSE_V1_ENFORCED_MIN:
        return CheckResult("compose", "fail", f"docker-compose {v1} is older than "
                           f"{hv.COMPOSE_V1_ENFORCED_MIN}, which install.sh requires",
                           f"install docker-compose >= {eff}")
    if v1 < eff:
        return CheckResult("compose", "fail", f"docker-compose {v1} cannot read Harbor {r}'s "
                           f"compose file (it has no `version:` key; needs >= {eff}); "
                           "install.sh does not catch this", f"install docker-compose >= {eff} "
                           "or the docker compose plugin")
    if r.compose_v1_documented_min is None:
        return CheckResult("compose", "warn", f"docker-compose v1 {v1}; Harbor {r} documents "
                           f"only Compose v2 >= {r.compose_v2_documented_min}",
                           "install the docker compose plugin")
    return CheckResult("compose", "pass", f"docker-compose {v1} (Harbor {r} needs >= {eff})")


def wanted_ports(site: Site) -> list[tuple[str, str, int]]:
    """(label, address, port) that Harbor and its front will bind on the host."""
    h = site.harbor
    out = [("harbor.http.port", "0.0.0.0", int((h.get("http") or {}).get("port", 80)))]
    if "https" in h:
        out.append(("harbor.https.port", "0.0.0.0", int((h.get("https") or {}).get("port", 443))))
    metric = h.get("metric") or {}
    if metric.get("enabled"):
        out.append(("harbor.metric.port", "0.0.0.0", int(metric.get("port", 9090))))
    out.append(("Harbor's log collector", "127.0.0.1", 1514))
    if site.front is not None:
        out.append(("front.listen", site.front.listen_address, site.front.listen_port))
    return out


def _overlaps(a: str, b: str) -> bool:
    wild = ("0.0.0.0", "::")
    return a in wild or b in wild or a == b


def check_ports(ctx: Context) -> list[CheckResult]:
    held = facts.listeners(ctx.facts)
    containers = facts.parse_docker_ps(ctx.facts.get("containers"))
    harbor_running = any(c.name in HARBOR_CONTAINERS for c in containers)
    out = []
    for label, addr, port in wanted_ports(ctx.site):
        where = f"{addr}:{port}"
        pub = [c for c in containers
               if any(p == port and _overlaps(a, addr) for a, p in c.ports)]
        users = [ls for ls in held if ls.port == port and _overlaps(ls.address, addr)]
        if pub:
            names = ", ".join(c.name for c in pub)
            if all(c.name in HARBOR_CONTAINERS for c in pub):
                out.append(CheckResult("ports", "pass", f"{where} ({label}) is published by "
                                       f"Harbor's own {names} container"))
            else:
                out.append(CheckResult("ports", "fail", f"{where} ({label}) is published by "
                                       f"container {names}", f"stop it or change {label}"))
            continue
        if not users:
            out.append(CheckResult("ports", "pass", f"{where} ({label}) is free"))
            continue
        procs = sorted({u.process for u in users if u.process})
        if label == "front.listen" and procs == ["nginx"] and ctx.facts.get("nginx_harbor_confs"):
            out.append(CheckResult("ports", "pass", f"{where} ({label}) is served by nginx with "
                                   "harborctl's front configuration"))
        elif not procs and harbor_running:
            out.append(CheckResult("ports", "warn", f"{where} ({label}) is in use, and Harbor "
                                   "runs here: probably its own", "run preflight as root to "
                                   "see which process holds it"))
        else:
            who = ", ".join(procs) or "a process (run as root to see which)"
            out.append(CheckResult("ports", "fail", f"{where} ({label}) is in use by {who}",
                                   f"stop that service or change {label}"))
    return out


def check_certificates(site: Site) -> list[CheckResult]:
    """harbor.https and front.tls pairs; controller-side files."""
    pairs = []
    https = site.harbor.get("https")
    if isinstance(https, dict) and https.get("certificate") and https.get("private_key"):
        pairs.append(("harbor.https", Path(https["certificate"]), Path(https["private_key"])))
    if site.front is not None and site.front.tls is not None:
        pairs.append(("front.tls", site.front.tls.certificate, site.front.tls.private_key))
    if not pairs:
        return [CheckResult("certificate", "skip", "no TLS configured (harbor.https, front.tls)")]
    host = site.front.server_name if site.front is not None else site.hostname
    out = []
    for label, cert, key in pairs:
        name = site.hostname if label == "harbor.https" else host
        rep = certs.check_pair(cert, key, name)
        bad = [f for f in rep.findings if f.severity in ("fail", "warn")]
        if bad:
            reason = f"{label}: " + "; ".join(f.message for f in bad)
            fix = "; ".join(dict.fromkeys(f.fix for f in bad if f.fix))
        else:
            notes = [f.message for f in rep.findings if f.severity == "info"]
            reason = (f"{label}: key matches, SAN covers {name}, chain complete "
                      f"({len(rep.chain)} cert(s)); " + "; ".join(notes))
            fix = ""
        out.append(CheckResult("certificate", rep.worst, reason, fix))
    return out


def check_hostname(ctx: Context) -> CheckResult:
    name = ctx.site.hostname
    try:
        ipaddress.ip_address(name)
        return CheckResult("hostname", "pass", f"harbor.hostname {name} is an IP address")
    except ValueError:
        pass
    if not is_hostname(name):
        return CheckResult("hostname", "fail", f"harbor.hostname {name!r} is not a DNS name",
                           "set it to the name clients use")
    run = ctx.facts.get("getent") or {}
    if run.get("rc") == 0 and run.get("out"):
        addrs = sorted({line.split()[0] for line in run["out"].splitlines() if line.split()})
        return CheckResult("hostname", "pass", f"{name} resolves to {', '.join(addrs)}")
    if run.get("rc") == 127:
        return CheckResult("hostname", "warn", "getent is missing; cannot check resolution")
    return CheckResult("hostname", "fail", f"{name} does not resolve on {ctx.host}",
                       f"add a DNS record (or an /etc/hosts line) for {name}")


def check_bundle(site: Site, info: bundle_mod.BundleInfo | None) -> CheckResult:
    if info is None:
        return CheckResult("bundle", "skip", "no --bundle given")
    if info.problems:
        return CheckResult("bundle", "fail", "; ".join(info.problems),
                           "use an intact harbor-offline-installer-vX.Y.Z.tgz")
    want = site.release.version
    if info.version != want:
        return CheckResult("bundle", "fail", f"{info.path.name} holds Harbor {info.version} but "
                           f"harbor.version is {want}", f"use harbor-offline-installer-v{want}.tgz "
                           f"or set harbor.version: {info.version}")
    try:
        hv.release(info.version)
    except UsageError as exc:
        return CheckResult("bundle", "fail", exc.message)
    extra = ("; " + "; ".join(info.warnings)) if info.warnings else ""
    keyring = site.install.bundle_keyring
    if keyring is not None:
        signed = verify_signature(info.path, keyring)
        if not signed.ok:
            return CheckResult("bundle", "fail", f"{info.path.name}: {signed.detail}",
                               f"use the bundle and .asc Harbor published, signed by a key in "
                               f"{keyring}")
        extra = f"; {signed.detail}{extra}"
    return CheckResult("bundle", "warn" if info.warnings else "pass",
                       f"Harbor {info.version} offline installer, {_gib(info.size)}, "
                       f"sha256 {info.sha256}{extra}")


def data_layout(db: dict[str, Any]) -> tuple[str | None, str | None]:
    """(layout, problem) from the probe's /data/database listing (harbor-facts §13.3)."""
    if not db.get("exists") or not db.get("entries"):
        return None, None if db.get("readable", True) else "cannot list /data/database"
    if db.get("root_pg_version"):
        return "9.6", None
    dirs = [d for d in db.get("pg_dirs") or [] if d in hv.LAYOUTS]
    if len(dirs) == 1:
        return dirs[0], None
    if len(dirs) > 1:
        return None, (f"{db.get('path')} holds several clusters ({', '.join(dirs)}): an earlier "
                      "upgrade started a new, EMPTY database beside the old one")
    return None, (f"{db.get('path')} is not empty but holds no Harbor database layout "
                  f"(entries: {', '.join(db['entries'][:6])})")


def installed_version(f: dict[str, Any]) -> tuple[Version | None, str]:
    """The Harbor that last ran here: the harbor-core image tag, else the install dir names."""
    for c in facts.parse_docker_ps(f.get("containers")):
        if c.name == "harbor-core" and ":" in c.image:
            v = _plain_version(c.image.rsplit(":", 1)[1])
            if v:
                return v, f"running {c.image}"
    for link in ("install_active", "install_current"):
        cur = _plain_version(f.get(link) or "")
        if cur:
            name = "harbor" if link == "install_active" else "current"
            return cur, f"the install dir's `{name}` link"
    found = {v for v in map(_plain_version, f.get("install_entries") or []) if v}
    if len(found) == 1:
        v = found.pop()
        return v, "the installed bundle directory"
    return None, ""


def _plain_version(text: str) -> Version | None:
    m = facts.version_of(text.rsplit("/", 1)[-1])
    if not m:
        return None
    try:
        return Version("{}.{}.{}".format(*m))
    except InvalidVersion:
        return None


def check_data_layout(ctx: Context) -> CheckResult:
    tgt = ctx.target
    layout, problem = data_layout(ctx.facts.get("database") or {})
    if problem:
        return CheckResult("data_layout", "fail", problem,
                           "restore the backup taken before the last upgrade; do not install")
    outcome = tgt.db_outcome(layout)
    cur, source = installed_version(ctx.facts)
    if cur is not None:
        try:
            cur_rel = hv.release(cur)
        except UsageError:
            cur_rel = None
        if cur_rel is not None and cur_rel.version != tgt.version:
            return _hop_result(cur_rel, tgt, layout, source)
    if outcome == "fresh":
        return CheckResult("data_layout", "pass", "no database yet: Harbor "
                           f"{tgt} initialises {tgt.data_layout}")
    if outcome == "use":
        return CheckResult("data_layout", "pass", f"{layout} is what harbor-db {tgt} uses")
    if outcome == "convert":
        return CheckResult("data_layout", "pass", f"harbor-db {tgt} converts {layout} -> "
                           f"{tgt.data_layout} (copy-mode pg_upgrade; disk check counts it)")
    assert layout is not None
    what = ("refuses it and does not start" if outcome == "refuse" else
            "cannot convert it and would start a NEW, EMPTY database beside it")
    return CheckResult("data_layout", "fail", f"/data/database holds "
                       f"{planner.describe_layout(layout)}; harbor-db {tgt} {what} (it converts "
                       f"only {tgt.converts_from or 'nothing'})",
                       f"the installed version is unknown: run `harborctl upgrade plan --from "
                       f"<installed version> --to {tgt} --data-layout {layout}` and follow its "
                       "stops")


def _hop_result(cur: Release, tgt: Release, layout: str | None, source: str) -> CheckResult:
    layout = layout or cur.data_layout
    try:
        plan = planner.plan(current=str(cur), target=str(tgt), data_layout=layout)
    except UpgradePathError as exc:
        return CheckResult("data_layout", "fail", f"installed Harbor {cur} (from {source}), "
                           f"data {layout}: {exc.message}", exc.hint or "")
    problems = planner.hop_problems(cur, tgt, layout)
    if not problems:
        return CheckResult("data_layout", "pass", f"{cur} -> {tgt} with {layout}: "
                           f"{tgt.db_outcome(layout)} (installed version from {source})")
    stops = " -> ".join([str(cur)] + plan.to_dict()["stops"])
    return CheckResult("data_layout", "fail", f"installing {tgt} over {cur} ({source}) is "
                       f"unsafe: {'; '.join(problems)}", f"the safe path is {stops}; "
                       f"see `harborctl upgrade plan --from {cur} --to {tgt}`")


def check_schema_dirty(ctx: Context) -> CheckResult:
    run = ctx.facts.get("schema")
    if run is None:
        return CheckResult("schema_dirty", "skip", "no running harbor-db container")
    if run.get("rc") != 0:
        return CheckResult("schema_dirty", "warn", "could not read schema_migrations: "
                           f"{str(run.get('err'))[:160]}", "check `docker logs harbor-db`")
    rows = [line.split("|") for line in str(run.get("out", "")).splitlines() if "|" in line]
    if not rows:
        return CheckResult("schema_dirty", "pass", "schema_migrations is empty (new database)")
    version, dirty = rows[-1][0].strip(), rows[-1][1].strip()
    if dirty in ("t", "true"):
        return CheckResult("schema_dirty", "fail", f"schema_migrations version {version} is "
                           "dirty: a previous migration failed", "restore from backup "
                           "(`harborctl backup restore`) before installing or upgrading")
    tgt = ctx.target
    if version.isdigit() and int(version) > tgt.schema_version:
        return CheckResult("schema_dirty", "fail", f"schema version {version} is newer than "
                           f"Harbor {tgt} knows ({tgt.schema_version}): this is a downgrade",
                           "install the version that wrote this database, or restore a backup")
    return CheckResult("schema_dirty", "pass", f"schema_migrations version {version}, clean")
