"""`render`: harbor.yml for every release, golden files, atomic writes, validators.

The harbor.yml checker below is written from harbor-facts.md §2.5 (keys Harbor's prepare
reads with [...], a KeyError traceback when missing) and §7 (prepare's validate()),
not from our own schema, so that a schema mistake shows up here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from harbor_ops.core.errors import RenderError
from harbor_ops.releases import yml_schema as schema
from harbor_ops.releases.versions import all_releases, latest_patch, minors, release
from harbor_ops.render import engine as render
from harbor_ops.render import harbor_yml as hyml
from harbor_ops.render import validate as render_checks
from harbor_ops.site.model import (
    Agent,
    Backup,
    Front,
    FrontCache,
    FrontTLS,
    HostEntry,
    Install,
    Logrotate,
    Site,
)
from tests.bed.fixtures import unavailable

GOLDEN = Path(__file__).parent / "golden"
ADMIN_PW = "Adm1n: #not-a-comment 'quoted\""
DB_PW = "db-pw-yes"


def example_harbor() -> dict[str, Any]:
    """The built-in example's harbor section, secrets resolved inline (test values)."""
    return {
        "hostname": "harbor.example.internal",
        "http": {"port": 8080},
        "external_url": "https://harbor.example.internal",
        "harbor_admin_password": ADMIN_PW,
        "database": {"password": DB_PW},
        "data_volume": "/data",
        "storage_service": {"redirect": {"disable": True}},
        "log": {"level": "info",
                "local": {"rotate_count": 50, "rotate_size": "200M",
                          "location": "/var/log/harbor"}},
    }


def make_site(*, version: str = "2.15.2", harbor: dict[str, Any] | None = None,
              front: Front | None | bool = True, **kw: Any) -> Site:
    """A Site built directly from the dataclasses (what config.load_site returns)."""
    if front is True:
        front = Front(listen_address="0.0.0.0", listen_port=443,
                      server_name="harbor.example.internal", upstream="http://127.0.0.1:8080",
                      tls=FrontTLS(Path("/etc/harborctl/tls/harbor.crt"),
                                   Path("/etc/harborctl/tls/harbor.key")),
                      cache=FrontCache())
    return Site(release=release(version), harbor=harbor or example_harbor(),
                front=front or None, logrotate=kw.get("logrotate", Logrotate()),
                backup=kw.get("backup", Backup()), agent=Agent(), install=Install(),
                hosts=(HostEntry(name="localhost", connection="local"),),
                path=Path("/etc/harborctl/harborctl.yml"))


def render_yml(site: Site, version: str | None = None) -> tuple[str, dict[str, Any]]:
    rel = release(version) if version else site.release
    text = render.render_texts(site, harbor_values=site.harbor, rel=rel)["harbor.yml"]
    return text, yaml.safe_load(text)


# ---------------------------------------------------------------- prepare's view (§2.5, §7)

def prepare_problems(doc: dict[str, Any], v: Version) -> list[str]:
    """What Harbor's prepare of release ``v`` would die on or refuse."""
    out = []

    def need(path: str) -> None:
        node: Any = doc
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                out.append(f"KeyError: {path}")
                return
            node = node[part]

    for path in ("hostname", "data_volume", "harbor_admin_password",
                 "jobservice.max_job_workers", "notification.webhook_job_max_retry",
                 "log.level"):
        need(path)
    if v >= Version("2.9.0"):
        need("jobservice.job_loggers")
    if v >= Version("2.8.0"):
        need("jobservice.logger_sweeper_duration")
        need("notification.webhook_job_http_client_timeout")
    redirect = (doc.get("storage_service") or {}).get("redirect")
    if redirect is not None:
        need("storage_service.redirect." + ("disable" if v >= Version("2.8.0") else "disabled"))
    if "https" in doc:
        need("https.certificate")
        need("https.private_key")
        if doc["https"].get("certificate") in (None, "", "/your/certificate/path"):
            out.append("The protocol is https but attribute ssl_cert is not set")
    if doc.get("hostname") in ("127.0.0.1", "reg.mydomain.com"):
        out.append("bad hostname")
    if doc.get("log", {}).get("level") not in schema.LOG_LEVELS:
        out.append("log level must be one of debug, info, warning, error, fatal")
    purge = doc.get("upload_purging")
    if purge and purge.get("enabled"):
        for leaf in ("age", "interval"):
            m = re.fullmatch(r"(\d+)h", str(purge.get(leaf)))
            if not m or int(m.group(1)) < 2:
                out.append(f"purge upload {leaf}")
    cache = doc.get("cache")
    if cache and cache.get("enabled") and not (cache.get("expire_hours") or 0) > 0:
        out.append("cache expire hours should be positive number")
    if doc.get("_version") != release(str(v)).yml_version:
        out.append(f"_version {doc.get('_version')}")
    for name in ("harbor_admin_password",):
        if not isinstance(doc.get(name), str):
            out.append(f"{name} is not a string")
    return out


def schema_paths(doc: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in doc.items():
        path = prefix + key
        if isinstance(value, dict) and value and schema.lookup(path) is None:
            out += schema_paths(value, path + ".")
        else:
            out.append(path)
    return out


@pytest.mark.parametrize("version", [str(r.version) for r in all_releases()])
def test_harbor_yml_satisfies_prepare_for_every_release(version: str) -> None:
    text, doc = render_yml(make_site(), version)
    assert prepare_problems(doc, Version(version)) == []
    assert text.startswith(f"# rendered by harborctl for Harbor {version}; do not edit")
    v = Version(version)
    for path in schema_paths(doc):
        if path == "_version":
            continue
        key = schema.lookup(path)
        if key is None:  # a pre-rename name
            key = next((k for k in schema.KEYS if k.name_for(v) == path), None)
        assert key is not None, f"{path} is not a harbor.yml key"
        assert key.available(v), f"{path} does not exist in {version}"
    for key in schema.KEYS:
        if key.active and key.available(v) and key.default_for(v) is not None:
            assert doc_get(doc, key.name_for(v)) is not None, key.path


def doc_get(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def test_secrets_and_odd_strings_survive_harbors_yaml_load() -> None:
    text, doc = render_yml(make_site())
    assert doc["harbor_admin_password"] == ADMIN_PW
    assert doc["database"]["password"] == DB_PW  # "yes" must not turn into a bool
    for value in ("on", "no", "0", "1.0", "null", "~", "a\nb", "tab\there", "#x", "*x", "&a",
                  "- x", "x: y", "@x", "%x", "`x", "", " lead", "trail ", "ü"):
        assert yaml.safe_load(f"k: {hyml.yaml_scalar(value)}")["k"] == value, value


@pytest.mark.parametrize(("version", "key", "expected"), [
    ("2.7.4", ("storage_service", "redirect", "disabled"), True),
    ("2.8.0", ("storage_service", "redirect", "disable"), True),
    ("2.0.6", ("external_redis", "host"), "redis.internal"),
    ("2.0.6", ("external_redis", "port"), 6380),
    ("2.1.0", ("external_redis", "host"), "redis.internal:6380"),
    ("2.2.0", ("database", "max_open_conns"), 1000),
    ("2.3.0", ("database", "max_open_conns"), 900),
    ("2.7.4", ("notification", "webhook_job_max_retry"), 10),
    ("2.8.6", ("notification", "webhook_job_max_retry"), 3),
    ("2.1.6", ("proxy", "components"), ["core", "jobservice", "clair", "trivy"]),
    ("2.2.0", ("proxy", "components"), ["core", "jobservice", "trivy"]),
    ("2.1.6", ("_version",), "2.0.0"),
    ("2.14.4", ("_version",), "2.14.0"),
])
def test_per_version_facts(version: str, key: tuple[str, ...], expected: Any) -> None:
    harbor = example_harbor()
    harbor["external_redis"] = {"host": "redis.internal:6380", "password": "r"}
    _, doc = render_yml(make_site(harbor=harbor), version)
    assert doc_get(doc, ".".join(key)) == expected


@pytest.mark.parametrize(("version", "absent"), [
    ("2.4.1", "trivy.offline_scan"), ("2.6.1", "trivy.security_check"),
    ("2.9.2", "trivy.skip_java_db_update"), ("2.10.0", "trivy.skip_java_db_update"),
    ("2.8.6", "jobservice.job_loggers"), ("2.7.4", "jobservice.logger_sweeper_duration"),
    ("2.8.0", "chart"), ("2.2.0", "clair"), ("2.4.3", "upload_purging"), ("2.5.6", "cache"),
])
def test_keys_absent_where_the_release_lacks_them(version: str, absent: str) -> None:
    _, doc = render_yml(make_site(), version)
    assert doc_get(doc, absent) is None


def test_http_only_site_has_no_https_block_and_https_site_keeps_it() -> None:
    _, doc = render_yml(make_site())
    assert "https" not in doc
    harbor = example_harbor()
    harbor["https"] = {"port": 8443, "certificate": "/etc/c.crt", "private_key": "/etc/c.key"}
    text, doc = render_yml(make_site(harbor=harbor))
    assert doc["https"] == harbor["https"]
    assert text.index("https:") < text.index("harbor_admin_password:")


def test_key_order_follows_harbors_template() -> None:
    text, _ = render_yml(make_site())
    tops = [line.split(":")[0] for line in text.splitlines() if re.match(r"^[a-z_]", line)]
    assert tops[:5] == ["hostname", "http", "external_url", "harbor_admin_password", "database"]
    assert tops.index("_version") == tops.index("log") + 1


def test_user_values_override_defaults_and_unset_take_the_version_default() -> None:
    harbor = example_harbor()
    harbor["jobservice"] = {"max_job_workers": 3}
    _, doc = render_yml(make_site(harbor=harbor), "2.13.5")
    assert doc["jobservice"]["max_job_workers"] == 3
    assert doc["jobservice"]["max_job_duration_hours"] == 24
    assert doc["jobservice"]["job_loggers"] == ["STD_OUTPUT", "FILE"]


# ---------------------------------------------------------------- golden files

GOLDEN_VERSIONS = [str(latest_patch(m).version) for m in minors()]


@pytest.mark.parametrize("version", GOLDEN_VERSIONS)
def test_golden_harbor_yml(version: str) -> None:
    text, _ = render_yml(make_site(), version)
    golden = GOLDEN / f"harbor-{version}.yml"
    if os.environ.get("HARBORCTL_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), "update with HARBORCTL_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("name", [n for n in render.FILES if n != "harbor.yml"])
def test_golden_other_files(name: str) -> None:
    site = make_site()
    text = render.render_texts(site, harbor_values=site.harbor, rel=site.release)[name]
    golden = GOLDEN / name.replace("/", "__")
    if os.environ.get("HARBORCTL_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_all_minor_lines_render() -> None:
    """Every minor line renders every file (how fast: bench/bench_render.py)."""
    site = make_site()
    out = render.render_all_versions(site, harbor_values=site.harbor)
    assert sorted(out) == sorted(GOLDEN_VERSIONS)
    assert all(len(files) == len(render.FILES) for files in out.values())


# ---------------------------------------------------------------- other files

def test_plain_http_front_keeps_a_balancers_forwarded_proto() -> None:
    site = make_site(front=Front(listen_address="::", listen_port=80, server_name="h.example",
                                 upstream="http://10.200.0.5:8080"))
    text = render.render_texts(site, harbor_values=site.harbor, rel=site.release)[
        "nginx/harbor.conf"]
    assert "listen [::]:80;" in text and "ssl_certificate" not in text
    assert "map $http_x_forwarded_proto $harborctl_forwarded_proto" in text
    assert "proxy_set_header X-Forwarded-Proto $harborctl_forwarded_proto;" in text
    assert "proxy_cache" not in text.split("server {", 1)[1]  # no cache configured: none used


def test_no_front_no_nginx_file() -> None:
    site = make_site(front=False)
    assert "nginx/harbor.conf" not in render.render_texts(site, harbor_values=site.harbor,
                                                          rel=site.release)


def test_site_values_reach_logrotate_cron_and_units() -> None:
    harbor = example_harbor()
    harbor["log"]["local"]["location"] = "/srv/harbor-logs/"
    site = make_site(harbor=harbor, logrotate=Logrotate(rotate=5, max_size="50M",
                                                        max_age_days=9),
                     backup=Backup(at="23:05"))
    options = render.RenderOptions(compose_command="/usr/bin/docker compose")
    texts = render.render_texts(site, harbor_values=site.harbor, rel=site.release,
                                options=options)
    lr = texts["logrotate/harbor"]
    assert "/srv/harbor-logs/*.log {" in lr
    for line in ("su 10000 10000", "rotate 5", "maxsize 50M", "maxage 9", "copytruncate"):
        assert f"    {line}\n" in lr
    # Hosts without systemd run the whole agent (not only `backup create`), every 5
    # minutes like the timer; every path single-quoted.
    assert re.search(r"^\*/5 \* \* \* \* root /usr/bin/flock -n '/run/lock/harborctl-agent.lock' "
                     r"'/usr/local/bin/harborctl' agent once -c '/etc/harborctl/harborctl.yml' "
                     r">>'/var/log/harborctl-agent.log' 2>&1$", texts["cron/harborctl"], re.M)
    assert "backup create" not in texts["cron/harborctl"]
    unit = texts["systemd/harbor.service"]
    # The Compose preflight found on the host (install writes it there) wins over the default.
    assert 'Environment="HARBOR_COMPOSE=/usr/bin/docker compose"\n' in unit
    assert "EnvironmentFile=-/etc/default/harbor\n" in unit
    # From the release folder itself (cd -P), as install.sh runs it: no recreation at boot.
    assert ("ExecStart=/bin/sh -c \"cd -P '/opt/harbor/harbor' && exec $$HARBOR_COMPOSE "
            "-p harbor up -d\"\n") in unit


# ---------------------------------------------------------------- render_site: writes

def test_render_site_writes_everything_with_modes_and_is_idempotent(tmp_path: Path) -> None:
    site = make_site()
    result = render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor)
    assert {c.status for c in result.changes} == {"created"}
    assert (tmp_path / "harbor.yml").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "nginx/harbor.conf").stat().st_mode & 0o777 == 0o644
    assert all(c.status == "ok" for c in result.checks if c.validator != "yaml round-trip"
               and render_checks.find_tool(c.validator.split()[0])), result.checks
    again = render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor)
    assert {c.status for c in again.changes} == {"unchanged"}
    assert not list(tmp_path.rglob("*.prev"))
    assert not list(tmp_path.rglob(".*tmp"))


def test_version_change_keeps_previous_and_diff_masks_secrets(tmp_path: Path) -> None:
    site = make_site()
    render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor)
    first = (tmp_path / "harbor.yml").read_text()
    harbor = example_harbor()
    harbor["database"]["password"] = "a-new-db-password"
    result = render.render_site(site, output_dir=tmp_path, version="2.7.4", harbor_values=harbor)
    change = {c.path: c for c in result.changes}["harbor.yml"]
    assert change.status == "changed"
    assert (tmp_path / "harbor.yml.prev").read_text() == first
    assert (tmp_path / "harbor.yml.prev").stat().st_mode & 0o777 == 0o600
    dump = str(result) + repr(result.to_dict())
    for secret in (ADMIN_PW, DB_PW, "a-new-db-password", "Adm1n"):
        assert secret not in dump
    assert "+    disabled: true" in change.diff
    assert f"+  password: {hyml.MASK_CHANGED}" in change.diff


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    site = make_site()
    result = render.render_site(site, output_dir=tmp_path / "out", dry_run=True,
                                harbor_values=site.harbor)
    assert result.dry_run and all(c.status == "created" for c in result.changes)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("folder", ["/opt/har bor", "/opt/$HOME", "/opt/`id`", "/opt/a;b",
                                    "/opt/it's", "/opt/50%"])
def test_an_install_folder_a_shell_or_unit_file_would_split_is_refused(
        tmp_path: Path, folder: str) -> None:
    site = dataclasses.replace(make_site(), install=Install(dir=Path(folder)))
    with pytest.raises(RenderError, match="install.dir") as refused:
        render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor)
    assert "without spaces, quotes, $" in (refused.value.hint or "")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_failed_validator_replaces_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if render_checks.find_tool("logrotate") is None:
        unavailable("logrotate is not installed (see .ci/provision)")
    site = make_site()
    render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    bad = make_site(logrotate=Logrotate(rotate=3, max_size="50 M", max_age_days=3))
    with pytest.raises(RenderError, match="logrotate"):
        render.render_site(bad, output_dir=tmp_path, version="2.9.5", harbor_values=site.harbor)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_unreadable_target_fails_before_any_write(tmp_path: Path) -> None:
    site = make_site()
    render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor, validate=False)
    for p in (tmp_path / "cron").iterdir():
        p.unlink()
    (tmp_path / "cron").rmdir()
    (tmp_path / "cron").write_text("a file where the last folder should be\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(RenderError, match="nothing was replaced"):
        render.render_site(site, output_dir=tmp_path, version="2.9.5",
                           harbor_values=site.harbor, validate=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_failed_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    """A real write failure (EFBIG from RLIMIT_FSIZE) after some files were staged."""
    site = make_site()
    render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor, validate=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))  # harbor.yml fits, nginx does not
    try:
        with pytest.raises(RenderError, match="nothing was replaced"):
            render.render_site(site, output_dir=tmp_path, version="2.9.5",
                               harbor_values=site.harbor, validate=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_nginx_validator_refuses_a_broken_front(tmp_path: Path) -> None:
    if render_checks.find_tool("nginx") is None:
        unavailable("nginx is not installed (see .ci/provision)")
    site = make_site(front=Front(listen_address="0.0.0.0", listen_port=443,
                                 server_name="harbor.example.internal",
                                 upstream="http://127.0.0.1:8080",
                                 cache=FrontCache(max_size="lots")))
    with pytest.raises(RenderError, match="nginx -t"):
        render.render_site(site, output_dir=tmp_path, harbor_values=site.harbor)
    assert not any(tmp_path.iterdir())


def test_systemd_verify_passes_our_units_and_fails_a_broken_one() -> None:
    """Only a real check counts: a skipped verify fails under CI (systemd is provisioned)."""
    site = make_site()
    texts = render.render_texts(site, harbor_values=site.harbor, rel=site.release)
    check = render_checks.check_systemd({n: t for n, t in texts.items()
                                         if n.startswith("systemd/")})
    if check.status == "skipped":
        unavailable(f"systemd-analyze verify could not run: {check.detail}")
    assert check.status == "ok", check
    broken = texts["systemd/harbor.service"].replace("Type=oneshot", "Type=oneshoot")
    bad = render_checks.check_systemd({"systemd/harbor.service": broken})
    assert bad.status == "failed" and "oneshoot" in bad.detail, bad


def test_unknown_version_is_a_usage_error(tmp_path: Path) -> None:
    from harbor_ops.core.errors import UsageError
    with pytest.raises(UsageError):
        render.render_site(make_site(), output_dir=tmp_path, version="2.16.0",
                           harbor_values=example_harbor())


def test_storage_driver_secrets_are_rendered_and_masked() -> None:
    harbor = example_harbor()
    harbor["storage_service"] = {"s3": {"region": "eu-1", "bucket": "b",
                                        "accesskey": "AKIA-test", "secretkey": "s3-secret-value"},
                                 "redirect": {"disable": False}}
    text, doc = render_yml(make_site(harbor=harbor), "2.5.6")
    assert doc["storage_service"]["s3"]["secretkey"] == "s3-secret-value"
    assert doc["storage_service"]["redirect"] == {"disabled": False}
    masked = hyml.mask(text)
    assert "s3-secret-value" not in masked and ADMIN_PW not in masked
    assert hyml.mask(text, previous=text) == masked  # unchanged secrets are not "changed"


def test_paths_that_would_split_a_unit_line_are_refused() -> None:
    site = make_site()
    with pytest.raises(RenderError, match="site file path"):
        render.render_texts(site, harbor_values=site.harbor, rel=site.release,
                            options=render.RenderOptions(site_path=Path("/etc/my site.yml")))
