"""Host keys are never skipped: install, preflight, backup push and Ansible refuse a host
whose key changed, and a host seen for the first time unless the user accepted new keys.

Real sshd on a test-bed host whose host key is regenerated (as a reinstall, or someone in
the middle, would do), real paramiko, real OpenSSH under Ansible, the real command line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harbor_ops.backup.remote import push_backup
from harbor_ops.core.errors import RemoteError
from harbor_ops.hosts import playbook as runner
from harbor_ops.preflight.run import run_preflight
from harbor_ops.site.load import load_site_text
from harbor_ops.site.model import HostEntry, Remote, Site
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed

pytestmark = pytest.mark.integration

VERSION = "2.15.2"
REMOTE_DIR = "/var/backups/harbor-hostkeys"
HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
PING = "- hosts: harbor\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"


def _reload_sshd(host: Host) -> None:
    """SIGHUP makes the listening sshd re-exec and read its host key again."""
    before = host.exec("pgrep -o -x sshd").stdout.strip()
    host.exec(f"kill -HUP {before}")
    deadline = time.monotonic() + 120  # bounded, generous for a loaded machine
    while time.monotonic() < deadline:
        probe = subprocess.run(["ssh-keyscan", "-T", "2", "-t", "ed25519", host.address],
                               capture_output=True, text=True, timeout=10)
        wanted = (host.root_path / f"{HOST_KEY}.pub").read_text().split()[1]
        if wanted in probe.stdout:
            return
        time.sleep(0.2)
    raise AssertionError(f"sshd on {host.name} did not come back with the new key")


@pytest.fixture(scope="module")
def rekeyed(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """h3 with a NEW host key; the bed's known_hosts still has the old one."""
    host = testbed.reset("h3")
    keydir = tmp_path_factory.mktemp("newkey")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "k")],
                   check=True, timeout=30)
    old = {s: (host.root_path / (HOST_KEY + s)).read_bytes() for s in ("", ".pub")}
    for suffix in ("", ".pub"):
        (host.root_path / (HOST_KEY + suffix)).write_bytes((keydir / f"k{suffix}").read_bytes())
    _reload_sshd(host)
    yield host
    for suffix, data in old.items():
        (host.root_path / (HOST_KEY + suffix)).write_bytes(data)
    _reload_sshd(host)


def _site_text(host: Host, key: Path | None, backup: dict[str, object] | None) -> str:
    """A site of one host (passwords from the variables X and Y); without ``key`` the
    ssh config names the key."""
    entry = {"name": host.name, "address": host.address}
    if key is not None:
        entry["ssh_key_file"] = str(key)
    data: dict[str, object] = {
        "harbor": {"version": VERSION, "hostname": host.address, "http": {"port": 8080},
                   "data_volume": "/data", "database": {"password_env": "X"},
                   "harbor_admin_password_env": "Y"},
        "hosts": [entry]}
    if backup is not None:
        data["backup"] = backup
    return yaml.safe_dump(data)


def _site(host: Host, tmp_path: Path, key: Path) -> Site:
    return load_site_text(_site_text(host, key, None), base_dir=tmp_path)


def _site_file(host: Host, tmp_path: Path, key: Path | None = None,
               backup: dict[str, object] | None = None) -> Path:
    """``tmp_path/harborctl.yml``, for the command line."""
    path = tmp_path / "harborctl.yml"
    path.write_text(_site_text(host, key, backup))
    return path


def _ssh_fail(site: Site, ssh_config: Path, **kw: bool) -> str:
    report = run_preflight(site, skip=["ports", "disk"], ssh_config=ssh_config, **kw)
    (results,) = report.results.values()
    ssh = [r for r in results if r.name == "ssh"]
    return f"{ssh[0].reason} ({ssh[0].fix})" if ssh else ""


def _ping(host: Host, tmp_path: Path, ssh_config: Path, accept: bool = False
          ) -> runner.PlaybookOutcome:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ping.yml").write_text(PING)
    argv, env = runner.build_command(
        playbook=tmp_path / "ping.yml", work_dir=tmp_path / "run", log_path=tmp_path / "log",
        extra_vars={}, ssh_config=ssh_config, accept_new_host_keys=accept,
        hosts=[HostEntry(host.name, address=host.address, ssh_key_file=host.key)])
    run = runner.run_playbook(argv, env, output_path=tmp_path / "out", timeout=600)
    for _ in run:
        pass
    return run.outcome


def _config(host: Host, tmp_path: Path, extra: str = "") -> Path:
    """An ssh config whose known_hosts starts empty (no global file either)."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host {host.name} {host.address}\n  HostName {host.address}\n"
                   f"  User root\n  IdentityFile {host.key}\n  IdentitiesOnly yes\n"
                   f"  UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
                   f"  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n{extra}")
    return cfg


# --------------------------------------------------------------------- a changed key


def test_preflight_refuses_a_changed_host_key(rekeyed: Host, testbed: TestBed,
                                              tmp_path: Path) -> None:
    site = _site(rekeyed, tmp_path, testbed.client_key)
    for accept in (False, True):  # accepting NEW keys never accepts a changed one
        got = _ssh_fail(site, testbed.ssh_config_path, accept_new_host_keys=accept)
        assert "host h3: the host key of" in got and "CHANGED" in got, got
    assert testbed.known_hosts_path.read_text().count("\n") == len(testbed.hosts)


def test_backup_push_refuses_a_changed_host_key(rekeyed: Host, tmp_path: Path) -> None:
    backup = tmp_path / "harbor-hb-20250101T020000Z.hbk"
    backup.write_bytes(b"not sent")
    remote = Remote(host=rekeyed.name, path=REMOTE_DIR, key_file=rekeyed.key)
    with pytest.raises(RemoteError, match="CHANGED") as exc:
        push_backup(backup, remote, ssh_config=rekeyed.ssh_config, accept_new_host_keys=True)
    assert f"root@h3:{REMOTE_DIR}" in str(exc.value)
    assert not (rekeyed.root_path / REMOTE_DIR.lstrip("/")).exists()


def test_ansible_refuses_a_changed_host_key(rekeyed: Host, tmp_path: Path) -> None:
    for accept in (False, True):
        outcome = _ping(rekeyed, tmp_path / str(accept), rekeyed.ssh_config, accept)
        assert not outcome.ok
        assert [f.status for f in outcome.failures] == ["unreachable"], outcome.failures
        assert "host key" in outcome.failures[0].msg.lower(), outcome.failures[0].msg


def test_install_refuses_a_changed_host_key(rekeyed: Host, testbed: TestBed,
                                            tmp_path: Path) -> None:
    bundle = build_bundle(VERSION, tmp_path / "bundle")
    site = _site_file(rekeyed, tmp_path, key=testbed.client_key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARBORCTL_")}
    env.update(X="hk-db-pw-1", Y="hk-admin-pw-1")
    proc = subprocess.run(
        [sys.executable, "-m", "harbor_ops.cli.main", "install", "--bundle", str(bundle),
         "-c", str(site), "--ssh-config", str(testbed.ssh_config_path),
         "--accept-new-host-keys", "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "h3: ssh: host h3: the host key of" in proc.stderr and "CHANGED" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (rekeyed.root_path / "opt/harbor").exists()
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------- an unknown key


def test_unknown_key_refused_unless_accepted_then_recorded(
        testbed: TestBed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = testbed.hosts["h4"]
    cfg = _config(host, tmp_path)
    known = tmp_path / "known_hosts"
    site = _site(host, tmp_path, testbed.client_key)
    got = _ssh_fail(site, cfg)
    assert "unknown host key" in got and "--accept-new-host-keys" in got, got
    assert not known.exists()
    ansible = _ping(host, tmp_path / "a1", cfg)
    assert [f.status for f in ansible.failures] == ["unreachable"], ansible.failures

    with caplog.at_level(logging.WARNING, logger="harborctl"):
        assert _ssh_fail(site, cfg, accept_new_host_keys=True) == ""
    pub = (host.root_path / f"{HOST_KEY}.pub").read_text().split()[1]
    assert known.read_text() == f"{host.address} ssh-ed25519 {pub}\n"
    assert known.stat().st_mode & 0o777 == 0o600
    assert f"recorded it in {known}" in caplog.text and "--accept-new-host-keys" in caplog.text
    # OpenSSH under Ansible trusts what was recorded: no option needed any more.
    assert _ping(host, tmp_path / "a2", cfg).ok


def test_accept_new_in_the_users_ssh_config(testbed: TestBed, tmp_path: Path) -> None:
    host = testbed.hosts["h4"]
    cfg = _config(host, tmp_path, "  StrictHostKeyChecking accept-new\n")
    backup = tmp_path / "harbor-hb-20250101T020000Z.hbk"
    backup.write_bytes(b"a backup")
    remote = Remote(host=host.name, path=REMOTE_DIR, key_file=host.key)
    try:
        assert push_backup(backup, remote, ssh_config=cfg).size == len(b"a backup")
    finally:
        host.exec(f"rm -rf {REMOTE_DIR}", check=False)
    assert host.address in (tmp_path / "known_hosts").read_text()


def test_ansible_accepts_a_new_key_only_when_asked(testbed: TestBed, tmp_path: Path) -> None:
    host = testbed.hosts["h4"]
    cfg = _config(host, tmp_path)
    assert _ping(host, tmp_path / "a", cfg, accept=True).ok
    assert host.address in (tmp_path / "known_hosts").read_text()


def test_preflight_cli_says_it_recorded_a_new_key(testbed: TestBed, tmp_path: Path) -> None:
    host = testbed.hosts["h4"]
    cfg = _config(host, tmp_path)
    site = _site_file(host, tmp_path)
    argv = [sys.executable, "-m", "harbor_ops.cli.main", "preflight", "-c", str(site),
            "--ssh-config", str(cfg), "--skip", "ports", "--skip", "disk"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # hang guard
    assert refused.returncode == 4 and "unknown host key" in refused.stdout, refused.stdout
    accepted = subprocess.run([*argv, "--accept-new-host-keys"], capture_output=True,
                              text=True, timeout=600)
    assert "harborctl: warning: accepted the new host key of h4" in accepted.stderr
    assert f"recorded it in {tmp_path / 'known_hosts'}" in accepted.stderr
    assert "FAIL  ssh" not in accepted.stdout, accepted.stdout


# --------------------------------------------------------------------- every SSH command


@pytest.mark.parametrize("command", [
    ["upgrade", "status", "--host", "h4"],
    ["backup", "pull"],
])
def test_commands_that_connect_take_the_option(testbed: TestBed, tmp_path: Path,
                                               command: list[str]) -> None:
    """Refused (exit 6, naming the option) without it; recorded with it. Whatever the
    command does next on a host without Harbor is not the point here."""
    host = testbed.hosts["h4"]
    cfg = _config(host, tmp_path)
    site = _site_file(host, tmp_path, backup={
        "dir": str(tmp_path / "backups"), "remote": {"host": host.name, "path": REMOTE_DIR}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARBORCTL_")}
    env.update(X="x", Y="y", HARBORCTL_SSH_CONFIG=str(cfg),
               HARBORCTL_LOCK_FILE=str(tmp_path / "lock"))
    argv = [sys.executable, "-m", "harbor_ops.cli.main", *command, "-c", str(site)]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 6 and "unknown host key" in out, out
    assert "--accept-new-host-keys" in out and "Traceback" not in out, out
    assert not (tmp_path / "known_hosts").exists()
    accepted = subprocess.run([*argv, "--accept-new-host-keys"], capture_output=True,
                              text=True, timeout=120, env=env)
    out = accepted.stdout + accepted.stderr
    assert "accepted the new host key of h4" in out and "unknown host key" not in out, out
    assert host.address in (tmp_path / "known_hosts").read_text()
