"""What differs between the bundles of two Harbor releases, in one place.

Facts come from harbor_ops.releases.versions (install flags, data layout, schema version,
images) where harborctl already holds them, and otherwise from reference/harbor-facts.md,
cited per item.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from harbor_ops.releases.versions import Release

V = Version
# Port each stand-in listens on (the port Harbor's service uses on the `harbor` network).
STUB_PORTS: dict[str, int] = {
    "harbor-portal": 8080, "harbor-jobservice": 8080, "harbor-registryctl": 8080,
    "redis-photon": 6379, "valkey-photon": 6379, "harbor-log": 10514,
    "trivy-adapter-photon": 8080, "notary-server-photon": 4443, "notary-signer-photon": 7899,
    "chartmuseum-photon": 9999, "clair-photon": 6060, "clair-adapter-photon": 8080,
    "harbor-exporter": 8080,
}


# The real PostgreSQL major that runs each of Harbor's data layouts: bullseye's 13,
# PyPI's 14 and 18 (pgdist.py), bookworm's 15. Only 9.6 has no source: 13 stands in for it.
REAL_MAJOR: dict[str, str] = {"9.6": "13", "pg13": "13", "pg14": "14", "pg15": "15",
                              "pg18": "18"}
PG13_LIBS = "/usr/lib/postgresql/13/syslib"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageSpec:
    entrypoint: list[str]
    user: str = "10000:10000"
    env: dict[str, str] = field(default_factory=dict)


def db_majors(rel: Release) -> tuple[str, str | None]:
    """(real major harbor-db runs, real major of the layout it converts from, if any)."""
    new = REAL_MAJOR[rel.data_layout]
    old = REAL_MAJOR[rel.converts_from] if rel.converts_from else None
    return new, old


def db_env(rel: Release) -> dict[str, str]:
    """PATH to the real major's binaries, the old side's bindir for pg_upgrade, and the
    private library dir of bullseye's 13 wherever 13 runs (see suites.add_pg13)."""
    new, old = db_majors(rel)
    env = {"PATH": f"/usr/lib/postgresql/{new}/bin:{SYSTEM_PATH}",
           "HARBOR_DB_OLD_BINDIR": f"/usr/lib/postgresql/{old or new}/bin"}
    if "13" in (new, old):
        env["LD_LIBRARY_PATH"] = PG13_LIBS
    return env


def prepare_knobs(rel: Release) -> dict[str, object]:
    """What prepare.py does differently per release (§2.5, §3, §7.2, §11.2)."""
    v = rel.version
    jobservice = (["logger_sweeper_duration"] if v >= V("2.8.0") else []) + (
        ["job_loggers"] if v >= V("2.9.0") else [])
    notification = ["webhook_job_max_retry"] + (
        ["webhook_job_http_client_timeout"] if v >= V("2.8.0") else [])
    return {
        "version": str(v),
        "prepare_flags": sorted(rel.install_flags),
        "redirect_key": "disable" if v >= V("2.8.0") else "disabled",
        "required": {"jobservice": jobservice, "notification": notification},
        "notary_https_check": v < V("2.9.0"),
        "compose_versionless": rel.compose_file_versionless,
        "redis_image": "valkey-photon" if "valkey-photon" in rel.images else "redis-photon",
    }


def db_entrypoint(rel: Release) -> tuple[str, list[str]]:
    """(generation, args) of harbor-db's ENTRYPOINT (§6 table)."""
    if rel.data_layout == "9.6":
        return "v2.0", []
    new = rel.data_layout.removeprefix("pg")
    if rel.converts_from == "9.6":
        return "v2.3", ["96", new]
    old = (rel.converts_from or "").removeprefix("pg")
    return "v2.7", [old, new]


def build_id(rel: Release) -> str:
    """Harbor prints harbor_version as vX.Y.Z-<git sha>; a stable stand-in sha per release."""
    return hashlib.sha256(f"harbor-{rel.version}".encode()).hexdigest()[:8]


def image_specs(rel: Release) -> dict[str, ImageSpec]:
    tag = f"v{rel.version}"
    common = {"HARBOR_VERSION": tag, "HARBOR_BUILD": build_id(rel),
              "PATH": f"/usr/lib/postgresql/15/bin:{SYSTEM_PATH}"}
    generation, args = db_entrypoint(rel)
    newest = rel.version >= V("2.15.2")
    specs: dict[str, ImageSpec] = {}
    for name in rel.images:
        if name == "prepare":
            specs[name] = ImageSpec(["python3", "/harbor/prepare.py"], "0:0", {
                "HARBOR_BED_RELEASE": json.dumps(prepare_knobs(rel), sort_keys=True)})
        elif name == "harbor-db":
            specs[name] = ImageSpec(["/harbor/db/docker-entrypoint.sh", *args], "999:999", {
                "PGDATA": "/var/lib/postgresql/data", "HARBOR_DB_ENTRYPOINT": generation,
                "HARBOR_DB_AUTH": "scram-sha-256" if newest else "md5",
                "HARBOR_DB_CHECKSUM_PROBE": "1" if newest else "0",
                "HARBOR_DB_REFRESH_COLLATION": "1" if newest else "0"})
        elif name == "harbor-core":
            specs[name] = ImageSpec(["python3", "/harbor/core.py"])
        elif name == "registry-photon":
            specs[name] = ImageSpec(["/usr/bin/docker-registry", "serve",
                                     "/etc/registry/config.yml"])
        elif name == "nginx-photon":
            specs[name] = ImageSpec(["nginx", "-e", "stderr", "-g", "daemon off;",
                                     "-c", "/etc/nginx/nginx.conf"])
        else:
            specs[name] = ImageSpec(["python3", "/harbor/stub.py", name, str(STUB_PORTS[name])])
        specs[name].env.update(common)
        if name == "harbor-db":
            specs[name].env.update(db_env(rel))
    return specs


def dockerfile(base: str, spec: ImageSpec, files: dict[str, Path] | None = None) -> str:
    """The image's Dockerfile: its config on the shared base layer, plus ONE layer of
    ``files`` (image path -> source, under ``root/`` in the build context) where it has any."""
    env = "".join(f"ENV {k}={json.dumps(v)}\n" for k, v in sorted(spec.env.items()))
    copies = "COPY root/ /\n" if files else ""
    return (f"FROM {base}\nLABEL org.harborctl.testbed=\"harbor-double\"\n{copies}{env}"
            f"USER {spec.user}\nWORKDIR /\nENTRYPOINT {json.dumps(spec.entrypoint)}\n")


MIGRATIONS_DIR = "/harbor/migrations/postgresql"


def image_files(rel: Release, name: str, migrations: Path) -> dict[str, Path]:
    """Files only this release's image carries: harbor-core's schema migrations up to the
    release's version (``NNNN_X.Y.Z_schema.up.sql``, where Harbor's core image has them), so
    the highest file names the version harborctl knows for the release."""
    if name != "harbor-core":
        return {}
    files = {f"{MIGRATIONS_DIR}/{p.name}": p for p in sorted(migrations.glob("*.up.sql"))
             if int(p.name.split("_", 1)[0]) <= rel.schema_version}
    highest = max(int(Path(t).name.split("_", 1)[0]) for t in files)
    if highest != rel.schema_version:
        raise ValueError(f"no migration file for schema {rel.schema_version} of {rel.version} "
                         f"(highest: {highest})")
    return files


def scripts(rel: Release, assets: Path) -> dict[str, str]:
    """install.sh, common.sh, prepare and harbor.yml.tmpl for this release."""
    values = {
        "VERSION": f"v{rel.version}", "TAG": f"v{rel.version}",
        "DOCKER_MSG": "20.10.10+" if rel.version >= V("2.11.0") else "17.06.0+",
        "CHECK_COMPOSE": _check_compose(rel), "USAGE": _usage(rel),
        "WARNINGS": _warnings(rel), "FLAG_CASES": _flag_cases(rel),
        "CLAIR_CHECK": _clair_check(rel),
    }
    out = {}
    for name in ("install.sh", "common.sh", "prepare"):
        text = (assets / f"{name}.in").read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        out[name] = text
    out["harbor.yml.tmpl"] = yml_template(rel)
    return out


def _check_compose(rel: Release) -> str:
    if not rel.compose_v2_accepted:  # ≤ 2.5.3: docker-compose v1 only
        return ("function check_dockercompose {\n"
                "    if ! docker-compose --version &> /dev/null\n    then\n"
                '        error "Need to install docker-compose(1.18.0+) by yourself first and '
                'run this script again."\n        exit 1\n    fi\n'
                "    check_compose_v1\n}\n")
    # 2.5.4+: Harbor's guard is invalid bash (`[!`), so its "install" branch never fires;
    # with no compose at all the v1 parse fails instead. Kept as the release behaves.
    return ("function check_dockercompose {\n"
            "    if docker compose version &> /dev/null\n    then\n"
            '        note "$(docker compose version)"\n'
            '        DOCKER_COMPOSE="docker compose"\n'
            "    else\n        check_compose_v1\n    fi\n}\n")


def _usage(rel: Release) -> str:
    v = rel.version
    lines = ["Please set hostname and other necessary attributes in harbor.yml first. DO NOT use "
             "localhost or 127.0.0.1 for hostname, because Harbor needs to be accessed by "
             "external clients."]
    if "--with-notary" in rel.install_flags:
        lines.append("Please set --with-notary if needs enable Notary in Harbor, and set "
                     "ui_url_protocol/ssl_cert/ssl_cert_key in harbor.yml bacause notary must "
                     "run under https. ")
    lines.append("Please set --with-trivy if needs enable Trivy in Harbor")
    if "--with-chartmuseum" in rel.install_flags:
        lines.append("Please set --with-chartmuseum if needs enable Chartmuseum in Harbor")
    if v >= V("2.9.0"):
        lines.append("Please do NOT set --with-notary, as notary has been deprecated and removed.")
    if v >= V("2.8.0"):
        lines.append("Please do NOT set --with-chartmuseum, as chartmusuem has been deprecated "
                     "and removed.")
    return "\\n".join(line.replace("'", "\\'") for line in lines)


def _warnings(rel: Release) -> str:
    if not V("2.6.0") <= rel.version < V("2.8.0"):
        return ""
    return ('\nwarn "Chartmusuem will be deprecated as of Harbor v2.6.0 and start to be removed '
            'in v2.8.0 or later. Please see discussion here for more details. '
            'https://github.com/goharbor/harbor/discussions/15057"\n'
            'warn "Notary will be deprecated as of Harbor v2.6.0 and start to be removed in '
            'v2.8.0 or later. You can use cosign for signature instead since Harbor v2.5.0. '
            'Please see discussion here for more details. '
            'https://github.com/goharbor/harbor/discussions/16612"\n')


def _flag_cases(rel: Release) -> str:
    arms = []
    for flag in sorted(rel.install_flags | rel.install_flags_erroring):
        var = "with_" + flag.removeprefix("--with-")
        arms.append(f"            {flag})\n            {var}=true;;")
    return "\n".join(arms)


def _clair_check(rel: Release) -> str:
    if "--with-clair" not in rel.install_flags_erroring:
        return ""
    return ('\nif [ $with_clair ]\nthen\n    error "Clair is deprecated please remove it from '
            'installation arguments !!!"\n    exit 1\nfi\n')


def yml_template(rel: Release) -> str:
    """Our own minimal harbor.yml for this release: every key its prepare requires."""
    knobs = prepare_knobs(rel)
    required = knobs["required"]
    assert isinstance(required, dict)
    job = "".join(
        {"logger_sweeper_duration": "  logger_sweeper_duration: 1\n",
         "job_loggers": "  job_loggers:\n    - STD_OUTPUT\n    - FILE\n"}[k]
        for k in required["jobservice"])
    retry = 3 if rel.version >= V("2.8.0") else 10
    timeout = ("  webhook_job_http_client_timeout: 3\n"
               if "webhook_job_http_client_timeout" in required["notification"] else "")
    return f"""# Harbor v{rel.version} configuration: harborctl test-bed template (not Harbor's).
# Set hostname to the name clients use; prepare refuses 127.0.0.1 and reg.mydomain.com.
hostname: reg.mydomain.com

http:
  port: 80

# https:
#   port: 443
#   certificate: /your/certificate/path
#   private_key: /your/private/key/path

harbor_admin_password: Harbor12345

database:
  password: root123
  max_idle_conns: 100
  max_open_conns: 900

data_volume: /data

jobservice:
  max_job_workers: 10
{job}
notification:
  webhook_job_max_retry: {retry}
{timeout}
log:
  level: info
  local:
    rotate_count: 50
    rotate_size: 200M
    location: /var/log/harbor

#This attribute is for migrator to detect the version of the .cfg file, DO NOT MODIFY!
_version: {rel.yml_version}
"""
