"""Does harborctl's harbor.yml pass Harbor's OWN ``prepare`` code, release by release?

Developer tool, not run in CI (it needs a clone of goharbor/harbor). For every tag it
extracts ``make/photon/prepare`` into a temp dir, renders harbor.yml with harborctl from a
few site variants, then runs Harbor's ``utils.configs.parse_yaml_config`` and
``validate`` on it in a subprocess whose PYTHONPATH is that prepare dir (it imports its
own top-level ``g``, ``models``, ``utils``). The subprocess also compares what prepare
parsed with what the site asked for (passwords, hosts, storage driver …), so a key that
prepare silently ignores, or a secret that YAML mangled, fails too.

Why only parse + validate and not the whole ``prepare`` command: the rest writes config
files into fixed container paths (/config, /data, /hostfs) and chowns them; parse and
validate are where harbor.yml is read and judged. Nothing of Harbor's code is modified:
``g.py`` only defines paths at import time, and ``parse_versions`` reads
/usr/src/app/versions only if it exists (it does not here), so no file-system stubbing is
needed. One library adaptation: Harbor 2.0.x calls ``yaml.load(f)`` without a Loader,
which its pinned PyYAML 4.2b1 (make/photon/prepare/Pipfile.lock) treats as
``safe_load``; PyYAML 6 requires the argument, so the subprocess defaults it to
SafeLoader, which is what 4.2b1 did.

Two checks against the tag's own ``make/harbor.yml.tmpl`` as well: a ``defaults`` column
compares every active key and value of that template with what harborctl renders from a
minimal site (https is left out on purpose: harborctl renders it only when configured),
and warnings list rendered keys whose name the template never mentions, even commented.

Run:  .venv/bin/python -m bench.check_real_prepare --harbor-git PATH/TO/harbor.git
      [--tags v2.0.6,v2.15.2] [--keep]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import yaml

from harbor_ops.core.errors import HarborctlError
from harbor_ops.releases import yml_schema as schema
from harbor_ops.releases.versions import Release, latest_patch, minors, release
from harbor_ops.render.engine import render_texts
from harbor_ops.render.harbor_yml import build
from harbor_ops.site.load import example_text, load_site_text, resolve_secrets

# Secrets chosen to break naive YAML quoting: ':' '#' quotes, braces, leading '@', a '%'.
SECRETS = {
    "HARBOR_ADMIN_PASSWORD": "Adm1n: #x 'q\" {y} %z",
    "HARBOR_DB_PASSWORD": "@db-pass: yes",
    "CHECK_EXT_DB_PASSWORD": "ext#db 'p'",
    "CHECK_EXT_REDIS_PASSWORD": "redis:pw@1",
    "CHECK_S3_SECRET": "s3/secret+key==",
}
PREPARE_TIMEOUT_S = 60

# Runs inside the subprocess with PYTHONPATH = the tag's make/photon/prepare.
WRAPPER = r'''
import inspect, json, sys, traceback
out = {"status": "PASS", "detail": "", "mismatches": []}
import yaml
_load = yaml.load
def _load_default_safe(stream, Loader=None):
    return _load(stream, Loader=Loader or yaml.SafeLoader)
yaml.load = _load_default_safe  # PyYAML 4.2b1 (Harbor 2.0.x's pin): load() == safe_load()
try:
    from utils.configs import parse_yaml_config, validate
    params = inspect.signature(parse_yaml_config).parameters
    flags = {"with_notary": False, "with_clair": False, "with_trivy": True,
             "with_chartmuseum": False}
    kwargs = {k: v for k, v in flags.items() if k in params}
    out["call"] = "parse_yaml_config(path, %s)" % ", ".join(
        "%s=%s" % kv for kv in kwargs.items())
    conf = parse_yaml_config(sys.argv[1], **kwargs)
    vparams = inspect.signature(validate).parameters
    validate(conf, **{k: v for k, v in kwargs.items() if k in vparams})
    for key, op, want in json.load(open(sys.argv[2])):
        if key not in conf:
            out["mismatches"].append("%s: missing from prepare's config" % key)
            continue
        got = conf[key]
        got = getattr(got, "enabled", got) if op == "enabled" else got
        ok = (want in str(got)) if op == "contains" else got == want
        if not ok:
            out["mismatches"].append("%s: prepare parsed %r, site meant %r" % (key, got, want))
    if out["mismatches"]:
        out["status"] = "MISMATCH"
except BaseException as exc:
    tb = traceback.extract_tb(exc.__traceback__)
    where = "%s:%s" % (tb[-1].filename.rsplit("/prepare/", 1)[-1], tb[-1].lineno) if tb else "?"
    out["status"] = "FAIL"
    out["detail"] = "%s: %s (at %s)" % (type(exc).__name__, exc, where)
print(json.dumps(out))
'''


@dataclass(frozen=True)
class Variant:
    name: str
    applies: Callable[[Release], bool]
    edit: Callable[[dict[str, Any], Release, Path], None]  # edits the site's harbor mapping
    expect: Callable[[Release], list[tuple[str, str, Any]]]  # (config key, op, value)


def _has(rel: Release, path: str) -> bool:
    key = schema.lookup(path)
    return key is not None and key.available(rel.version)


def _base_expect(rel: Release) -> list[tuple[str, str, Any]]:
    return [("hostname", "eq", "harbor.example.internal"),
            ("harbor_admin_password", "eq", SECRETS["HARBOR_ADMIN_PASSWORD"]),
            ("public_url", "eq", "https://harbor.example.internal"),
            ("log_level", "eq", "info"), ("log_location", "eq", "/var/log/harbor"),
            ("data_volume", "eq", "/data")]


def _example(h: dict[str, Any], rel: Release, tmp: Path) -> None:
    pass


def _example_expect(rel: Release) -> list[tuple[str, str, Any]]:
    return [*_base_expect(rel), ("protocol", "eq", "http"), ("http_port", "eq", 8080),
            ("harbor_db_password", "eq", SECRETS["HARBOR_DB_PASSWORD"]),
            ("external_database", "eq", False), ("external_redis", "eq", False),
            ("storage_provider_name", "eq", "filesystem")]


def _https(h: dict[str, Any], rel: Release, tmp: Path) -> None:
    crt, key = _self_signed(tmp)
    h["https"] = {"port": 8443, "certificate": str(crt), "private_key": str(key)}
    if _has(rel, "https.strong_ssl_ciphers"):
        h["https"]["strong_ssl_ciphers"] = True


def _https_expect(rel: Release) -> list[tuple[str, str, Any]]:
    out = [*_base_expect(rel), ("protocol", "eq", "https"), ("https_port", "eq", 8443),
           ("cert_path", "contains", "harbor.crt"), ("cert_key_path", "contains", "harbor.key")]
    if _has(rel, "https.strong_ssl_ciphers"):
        out.append(("strong_ssl_ciphers", "eq", True))
    return out


def _external(h: dict[str, Any], rel: Release, tmp: Path) -> None:
    h["external_database"] = {"harbor": {
        "host": "10.200.0.10", "port": 5433, "db_name": "registry", "username": "harbor",
        "password_env": "CHECK_EXT_DB_PASSWORD", "ssl_mode": "disable",
        "max_idle_conns": 2, "max_open_conns": 0}}
    h["external_redis"] = {
        "host": "10.200.0.11:6380", "password_env": "CHECK_EXT_REDIS_PASSWORD",
        "registry_db_index": 1, "jobservice_db_index": 2, "trivy_db_index": 5,
        "idle_timeout_seconds": 30}
    if _has(rel, "external_redis.harbor_db_index"):
        h["external_redis"]["harbor_db_index"] = 6
        h["external_redis"]["cache_layer_db_index"] = 7


def _external_expect(rel: Release) -> list[tuple[str, str, Any]]:
    return [*_base_expect(rel), ("external_database", "eq", True),
            ("harbor_db_host", "eq", "10.200.0.10"), ("harbor_db_port", "eq", 5433),
            ("harbor_db_username", "eq", "harbor"),
            ("harbor_db_password", "eq", SECRETS["CHECK_EXT_DB_PASSWORD"]),
            ("external_redis", "eq", True), ("redis_url_reg", "contains", "10.200.0.11:6380"),
            ("redis_url_js", "contains", "10.200.0.11:6380"),
            ("trivy_redis_url", "contains", "10.200.0.11:6380")]


def _s3(h: dict[str, Any], rel: Release, tmp: Path) -> None:
    h["storage_service"] = {
        "s3": {"region": "us-east-1", "bucket": "harbor-blobs", "accesskey": "AKIAEXAMPLE",
               "secretkey_env": "CHECK_S3_SECRET", "regionendpoint": "http://10.200.0.12:9000"},
        "redirect": {"disable": True}}


def _s3_expect(rel: Release) -> list[tuple[str, str, Any]]:
    return [*_base_expect(rel), ("storage_provider_name", "eq", "s3"),
            ("storage_provider_config", "eq", {
                "region": "us-east-1", "bucket": "harbor-blobs", "accesskey": "AKIAEXAMPLE",
                "secretkey": SECRETS["CHECK_S3_SECRET"],
                "regionendpoint": "http://10.200.0.12:9000"}),
            ("storage_redirect_disabled", "eq", True)]


def _observability(h: dict[str, Any], rel: Release, tmp: Path) -> None:
    h["metric"] = {"enabled": True, "port": 9090, "path": "/metrics"}
    if _has(rel, "trace.enabled"):
        h["trace"] = {"enabled": True, "sample_rate": 1, "namespace": "harbor-check",
                      "attributes": {"application": "harbor"},
                      "otel": {"endpoint": "10.200.0.13:4318", "url_path": "/v1/traces",
                               "compression": False, "insecure": True, "timeout": 10}}


def _observability_expect(rel: Release) -> list[tuple[str, str, Any]]:
    out = [*_base_expect(rel), ("metric", "enabled", True)]
    if _has(rel, "trace.enabled"):
        out.append(("trace", "enabled", True))
    return out


VARIANTS = (
    Variant("example", lambda r: True, _example, _example_expect),
    Variant("https", lambda r: True, _https, _https_expect),
    Variant("external-db-redis", lambda r: True, _external, _external_expect),
    Variant("s3-noredirect", lambda r: True, _s3, _s3_expect),
    Variant("metric-trace", lambda r: _has(r, "metric.enabled"), _observability,
            _observability_expect),
)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A real key pair (prepare only checks the paths, nginx would read the files)."""
    crt, key_path = tmp / "harbor.crt", tmp / "harbor.key"
    if crt.exists():
        return crt, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harbor.example.internal")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("harbor.example.internal")]), critical=False)
            .sign(key, hashes.SHA256()))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return crt, key_path


def extract_prepare(git_dir: Path, tag: str, dest: Path) -> tuple[Path, str]:
    """``make/photon/prepare`` at ``tag`` under ``dest``; also the tag's harbor.yml.tmpl."""
    blob = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "--format=tar", tag,
                           "make/photon/prepare"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    tmpl = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{tag}:make/harbor.yml.tmpl"],
                          capture_output=True, text=True)
    return dest / "make" / "photon" / "prepare", tmpl.stdout if tmpl.returncode == 0 else ""


def render_variant(variant: Variant, rel: Release, tmp: Path) -> str:
    data = yaml.safe_load(example_text())
    data["harbor"]["version"] = str(rel.version)
    variant.edit(data["harbor"], rel, tmp)
    site = load_site_text(yaml.safe_dump(data, sort_keys=False), base_dir=tmp,
                          version=str(rel.version))
    return render_texts(site, harbor_values=resolve_secrets(site), rel=rel)["harbor.yml"]


def run_prepare(prepare_dir: Path, yml: Path, expect: list[tuple[str, str, Any]],
                work: Path) -> dict[str, Any]:
    expect_file = work / "expect.json"
    expect_file.write_text(json.dumps(expect), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(prepare_dir),
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(work)}
    try:
        proc = subprocess.run([sys.executable, "-c", WRAPPER, str(yml), str(expect_file)],
                              cwd=work, env=env, capture_output=True, text=True,
                              timeout=PREPARE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": "FAIL", "detail": f"prepare did not return in {PREPARE_TIMEOUT_S}s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"status": "FAIL", "detail": f"wrapper crashed (rc {proc.returncode}): "
                f"{proc.stderr.strip()[-400:]}"}


_LEAF = re.compile(r"^[\s#]*([A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)


def unknown_to_template(yml_text: str, tmpl: str) -> list[str]:
    """Rendered key names the tag's own harbor.yml.tmpl never mentions (even commented)."""
    if not tmpl:
        return []
    known = set(_LEAF.findall(tmpl)) | {"_version"}
    doc = yaml.safe_load(yml_text) or {}
    out: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            path = f"{prefix}{k}"
            if path.startswith("trace.attributes.") or (
                    prefix == "storage_service." and k in schema.STORAGE_DRIVERS):
                continue  # drivers and free-form attributes: the template names few of them
            if k not in known:
                out.append(path)
            if isinstance(v, dict):
                walk(v, path + ".")
    walk(doc, "")
    return out


def _leaf_values(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaf_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def template_defaults(rel: Release, tmpl: str) -> tuple[str, str]:
    """harborctl's active keys and defaults vs the tag's template (placeholders excepted)."""
    if not tmpl:
        return "SKIP", "no make/harbor.yml.tmpl at this tag"
    theirs = _leaf_values(yaml.safe_load(tmpl) or {})
    ours = _leaf_values(build({"hostname": "h", "harbor_admin_password": "a",
                               "database": {"password": "d"}}, rel))
    skip = {"hostname", "harbor_admin_password", "database.password", "_version"}
    diffs = [f"{k}: template {theirs.get(k, '<absent>')!r}, harborctl {ours.get(k, '<absent>')!r}"
             for k in sorted(set(theirs) | set(ours))
             if k not in skip and not k.startswith("https.")
             and theirs.get(k, "<absent>") != ours.get(k, "<absent>")]
    return ("PASS", "") if not diffs else ("FAIL", "; ".join(diffs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harbor-git", required=True, type=Path,
                    help="a goharbor/harbor git dir (bare or .git)")
    ap.add_argument("--tags", help="comma-separated tags, e.g. v2.0.6,v2.15.2 "
                    "(default: the latest patch of every minor harborctl knows)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and print its path")
    args = ap.parse_args(argv)
    tags = (args.tags.split(",") if args.tags
            else [f"v{latest_patch(m).version}" for m in minors()])
    for name, value in SECRETS.items():
        os.environ[name] = value
    rows: list[tuple[str, str, str, str]] = []
    warnings: dict[str, list[str]] = {}
    tmp_root = Path(tempfile.mkdtemp(prefix="harborctl-real-prepare-"))
    try:
        for tag in tags:
            rel = release(tag.lstrip("v"))
            prepare_dir, tmpl = extract_prepare(args.harbor_git, tag, tmp_root / tag)
            rows.append((tag, "defaults", *template_defaults(rel, tmpl)))
            for variant in VARIANTS:
                if not variant.applies(rel):
                    rows.append((tag, variant.name, "SKIP", "not in this release"))
                    continue
                work = tmp_root / tag / variant.name
                work.mkdir(parents=True)
                try:
                    text = render_variant(variant, rel, work)
                except HarborctlError as exc:
                    rows.append((tag, variant.name, "RENDER-FAIL", str(exc)))
                    continue
                yml = work / "harbor.yml"
                yml.write_text(text, encoding="utf-8")
                res = run_prepare(prepare_dir, yml, variant.expect(rel), work)
                detail = res.get("detail") or "; ".join(res.get("mismatches", []))
                rows.append((tag, variant.name, res["status"], detail))
                extra = unknown_to_template(text, tmpl)
                if extra:
                    warnings.setdefault(tag, [])
                    warnings[tag] += [k for k in extra if k not in warnings[tag]]
    finally:
        if args.keep:
            print(f"kept: {tmp_root}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", "--", str(tmp_root)], check=False)
    _print_table(rows)
    for tag, keys in warnings.items():
        print(f"warning {tag}: rendered keys not in that tag's harbor.yml.tmpl: {', '.join(keys)}")
    failed = [r for r in rows if r[2] not in ("PASS", "SKIP")]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} PASS or SKIP across {len(tags)} tags")
    return 1 if failed else 0


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    names = [v.name for v in VARIANTS] + ["defaults"]
    tags = list(dict.fromkeys(r[0] for r in rows))
    cell = {(r[0], r[1]): r[2] for r in rows}
    width = max(len(n) for n in names)
    print(f"{'tag':<9}" + "".join(f" {n:<{width}}" for n in names))
    for tag in tags:
        print(f"{tag:<9}" + "".join(f" {cell.get((tag, n), '-'):<{width}}" for n in names))
    for tag, name, status, detail in rows:
        if status not in ("PASS", "SKIP"):
            print(f"  {tag} {name}: {status}: {detail}")


if __name__ == "__main__":
    raise SystemExit(main())
