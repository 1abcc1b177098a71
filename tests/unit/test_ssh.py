"""The one SSH target resolver and host-key policy (harbor_ops.hosts.ssh), over real
ssh config files; the connections themselves are tested on the bed (test_host_keys)."""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

import paramiko
import pytest

from harbor_ops.core.errors import RemoteError
from harbor_ops.hosts import ssh

CONFIG = """Host web1
  HostName 192.0.2.7
  Port 2222
  User deploy
  IdentityFile ~/.ssh/deploy_key
  UserKnownHostsFile {known} ~/.ssh/other_known
  ConnectTimeout 5
Host loose
  StrictHostKeyChecking {strict}
"""


def _cfg(tmp_path: Path, strict: str = "yes") -> Path:
    path = tmp_path / "config"
    path.write_text(CONFIG.format(known=tmp_path / "kh", strict=strict))
    return path


def test_the_ssh_config_fills_what_harborctl_leaves_unset(tmp_path: Path) -> None:
    t = ssh.resolve("web1", ssh_config=_cfg(tmp_path))
    assert (t.address, t.port, t.user, t.timeout) == ("192.0.2.7", 2222, "deploy", 5.0)
    assert t.key_files == (str(Path.home() / ".ssh/deploy_key"),)
    assert t.known_hosts == (tmp_path / "kh", Path.home() / ".ssh/other_known",
                             ssh.GLOBAL_KNOWN_HOSTS)
    assert not t.accept_new


def test_harborctl_values_win(tmp_path: Path) -> None:
    t = ssh.resolve("web1", address="web1", port=2200, user="ops", key_file=tmp_path / "k",
                    ssh_config=_cfg(tmp_path))
    assert (t.address, t.port, t.user, t.key_files) == ("web1", 2200, "ops",
                                                        (str(tmp_path / "k"),))
    assert t.where == "ops@web1:2200"


def test_defaults_without_any_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(ssh.SSH_CONFIG_ENV, raising=False)
    t = ssh.resolve("h1")
    assert (t.address, t.port, t.user, t.key_files, t.accept_new) == ("h1", 22, "root", (),
                                                                       False)
    assert t.known_hosts == (tmp_path / ".ssh/known_hosts", ssh.GLOBAL_KNOWN_HOSTS)


@pytest.mark.parametrize(("strict", "option", "accepts", "why"), [
    ("yes", False, False, ""),
    ("ask", False, False, ""),  # nobody can answer a prompt: refused
    ("accept-new", False, True, "StrictHostKeyChecking accept-new in"),
    ("no", False, True, "StrictHostKeyChecking no in"),
    ("yes", True, True, "--accept-new-host-keys"),
])
def test_unknown_keys_are_accepted_only_when_the_user_says_so(
        tmp_path: Path, strict: str, option: bool, accepts: bool, why: str) -> None:
    t = ssh.resolve("loose", ssh_config=_cfg(tmp_path, strict),
                    accept_new_host_keys=option)
    assert t.accept_new is accepts
    assert why in t.accept_reason and (accepts or t.accept_reason == "")


def test_an_unreadable_config_is_a_remote_error(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="cannot read the ssh config"):
        ssh.resolve("h1", ssh_config=tmp_path / "missing")


def test_an_accepted_key_is_recorded_atomically_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    known = tmp_path / "sub" / "known_hosts"
    t = ssh.SshTarget("h1", "192.0.2.9", 22, "root", (), (known,), True,
                      "--accept-new-host-keys", 5.0)
    key = paramiko.RSAKey.generate(1024)
    with caplog.at_level(logging.WARNING, logger="harborctl"):
        ssh.record_host_key(t, "192.0.2.9", key)
        ssh.record_host_key(t, "[192.0.2.9]:2222", key)
    lines = known.read_text().splitlines()
    assert lines == [f"192.0.2.9 ssh-rsa {key.get_base64()}",
                     f"[192.0.2.9]:2222 ssh-rsa {key.get_base64()}"]
    assert known.stat().st_mode & 0o777 == 0o600
    assert ssh.fingerprint(key) in caplog.text and "--accept-new-host-keys" in caplog.text
    loaded = paramiko.HostKeys(str(known))  # paramiko (and OpenSSH) read what we wrote
    assert loaded.lookup("192.0.2.9") is not None


def test_ansible_ssh_args_never_turn_checking_off(tmp_path: Path) -> None:
    spaced = tmp_path / "my config"
    args = ssh.ansible_ssh_args(spaced)
    assert f"-F '{spaced}'" in args and "-o BatchMode=yes" in args
    assert "StrictHostKeyChecking" not in args
    assert "StrictHostKeyChecking=accept-new" in ssh.ansible_ssh_args(
        None, accept_new_host_keys=True)


def test_ansible_ssh_args_are_what_openssh_applies() -> None:
    """OpenSSH itself (`ssh -G`, which connects nowhere) reads the args as meant: batch
    mode, a shared connection, and keepalives that notice a dead link within a minute."""
    argv = ["ssh", "-G", *shlex.split(ssh.ansible_ssh_args(None)), "h1.invalid"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
    got = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert got["batchmode"] == "yes" and got["controlmaster"] == "auto"
    assert got["serveraliveinterval"] == "15" and got["serveralivecountmax"] == "4"
    assert int(got["serveraliveinterval"]) * int(got["serveralivecountmax"]) <= 60
