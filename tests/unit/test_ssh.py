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


def _openssh_reads(args: str) -> dict[str, str]:
    argv = ["ssh", "-G", *shlex.split(args), "h1.invalid"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_ansible_ssh_args_put_aes_gcm_first_and_keep_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSH (`ssh -G`) offers AES-GCM first and still every other default cipher after
    it (the `^` form), so a server without AES-GCM negotiates one of those."""
    monkeypatch.setattr(ssh.Path, "home", lambda: tmp_path)  # no ~/.ssh/config of the user
    monkeypatch.setattr(ssh, "SYSTEM_SSH_CONFIG", tmp_path / "none")
    plain = tmp_path / "plain"
    plain.write_text("Host *\n  User deploy\n")
    default = _openssh_reads(f"-F {plain}")["ciphers"].split(",")
    for config in (None, plain):
        args = ssh.ansible_ssh_args(config)
        assert "-o Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com" in args
        offered = _openssh_reads(args if config else f"-F {plain} {args}")["ciphers"].split(",")
        assert offered[:2] == ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
        assert set(offered) == set(default)  # nothing dropped, nothing added
        assert "chacha20-poly1305@openssh.com" in offered


@pytest.mark.parametrize("where", ["own", "included", "home", "system"])
def test_ansible_ssh_args_leave_the_users_ciphers_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A Ciphers line in the user's ssh config (or a file it includes, or, without -F, in
    ~/.ssh/config or the system's file) is what OpenSSH applies: harborctl adds none."""
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    monkeypatch.setattr(ssh.Path, "home", lambda: home)
    system = tmp_path / "ssh_config"
    system.write_text("Host *\n#   Ciphers aes128-ctr\n")  # a comment chooses nothing
    monkeypatch.setattr(ssh, "SYSTEM_SSH_CONFIG", system)
    own = tmp_path / "config"
    own.write_text("Host *\n  User deploy\n")
    choice = "Host h1.invalid\n  Ciphers=aes256-ctr\n"
    config: Path | None = own
    if where == "own":
        own.write_text(own.read_text() + choice)
    elif where == "included":
        (home / ".ssh" / "conf.d" / "fleet.conf").write_text(choice)
        # absolute here, for `ssh -G` below (OpenSSH takes relative ones from the real ~/.ssh)
        own.write_text(f"Include {home}/.ssh/conf.d/*.conf\n" + own.read_text())
    elif where == "home":
        (home / ".ssh" / "config").write_text(choice)
        config = None
    else:
        system.write_text(system.read_text() + "  Ciphers aes256-ctr\n")
        config = None
    args = ssh.ansible_ssh_args(config)
    assert "Ciphers" not in args
    if config is not None:
        assert _openssh_reads(args)["ciphers"] == "aes256-ctr"
    # and without the choice, the preference is back
    for path in (own, home / ".ssh" / "config", home / ".ssh" / "conf.d" / "fleet.conf",
                 system):
        if path.exists():
            path.write_text(path.read_text().replace("Ciphers", "# Ciphers"))
    assert "-o Ciphers=^" in ssh.ansible_ssh_args(config)


def test_relative_includes_are_read_from_the_users_ssh_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    monkeypatch.setattr(ssh.Path, "home", lambda: home)
    (home / ".ssh" / "conf.d" / "a.conf").write_text("Host x\n  Ciphers aes256-ctr\n")
    own = tmp_path / "config"
    own.write_text("Include conf.d/*.conf\n")
    assert "Ciphers" not in ssh.ansible_ssh_args(own)
    own.write_text("Include other.d/*.conf\n")  # nothing there: harborctl's preference
    assert "-o Ciphers=^" in ssh.ansible_ssh_args(own)
