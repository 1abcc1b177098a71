"""The one SSH target resolver and host-key policy: preflight facts, backup push, Ansible.

Why one module: a host reached three ways (the fact probe over paramiko, the off-host
backup copy over paramiko/SFTP, the playbooks over OpenSSH) must be the same host with the
same trust. :func:`resolve` merges what harborctl was told (site file, inventory) with the
user's ssh config the way OpenSSH does; :func:`connect` opens a paramiko session under the
host-key policy; :func:`ansible_ssh_args` gives OpenSSH the same policy.

The policy: a known host key must match, always (a changed key is refused, whatever the
settings). An unknown key is refused unless the user said otherwise explicitly: the
``--accept-new-host-keys`` option, or ``StrictHostKeyChecking accept-new`` / ``no`` written
in their own ssh config. An accepted key is recorded in the known_hosts file (as OpenSSH
does) and reported. harborctl never turns the check off on its own.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import logging
import os
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harbor_ops.core.errors import RemoteError
from harbor_ops.core.fsutil import atomic_write

if TYPE_CHECKING:
    import paramiko

SSH_CONFIG_ENV = "HARBORCTL_SSH_CONFIG"
CONNECT_TIMEOUT = 15.0
DEFAULT_PORT = 22
DEFAULT_USER = "root"
GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
# StrictHostKeyChecking values that accept (and record) an unknown key. "ask", OpenSSH's
# default, cannot ask anyone here, so it refuses like "yes".
_ACCEPTING = ("accept-new", "no", "off", "false")
# AES-GCM first: one AEAD pass in OpenSSL per packet instead of CTR plus a separate HMAC,
# which halved paramiko's cost per byte on a backup stream (bench/bench_backup_remote.py).
# The other ciphers stay offered, in paramiko's order, for servers without GCM.
_GCM_FIRST = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

log = logging.getLogger("harborctl")
_record_lock = threading.Lock()  # preflight connects to hosts in parallel


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect, after merging harborctl's settings with the ssh config."""

    name: str  # as the site file or inventory names the host (used in messages)
    address: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: tuple[Path, ...]  # read in this order; the first is where keys are recorded
    accept_new: bool
    accept_reason: str  # who said so: the option or the ssh config
    timeout: float

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


def default_ssh_config() -> Path | None:
    """``$HARBORCTL_SSH_CONFIG``, else ``~/.ssh/config`` when it exists, else None."""
    env = os.environ.get(SSH_CONFIG_ENV)
    if env:
        return Path(env)
    home = Path.home() / ".ssh" / "config"
    return home if home.is_file() else None


def _read_config(path: Path | None, lookup: str) -> dict[str, Any]:
    import paramiko

    if path is None:
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(lookup))
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteError(f"cannot read the ssh config {path}: {exc}") from None


def _paths(value: Any, default: tuple[Path, ...]) -> tuple[Path, ...]:
    if not value:
        return default
    words = value if isinstance(value, list) else str(value).split()
    return tuple(Path(os.path.expanduser(str(w))) for w in words)


def _pick(given: Any, default: Any, configured: Any) -> Any:
    """harborctl's value unless it is unset or the default; then the config's, or the default."""
    if given is not None and given != default:
        return given
    return configured if configured is not None else default


def resolve(name: str, *, address: str | None = None, port: int | None = None,
            user: str | None = None, key_file: str | os.PathLike[str] | None = None,
            ssh_config: Path | None = None, accept_new_host_keys: bool = False) -> SshTarget:
    """The connection for host ``name``: harborctl's values win where they are set
    (``None``, port 22 and user root count as unset); the ssh config fills the rest.

    The config is looked up by ``address or name``, like OpenSSH under Ansible.
    Without ``ssh_config``, :func:`default_ssh_config` is read.
    """
    config_path = ssh_config if ssh_config is not None else default_ssh_config()
    cfg = _read_config(config_path, address or name)
    keys: tuple[str, ...] = ()
    if key_file is not None:
        keys = (str(key_file),)
    elif cfg.get("identityfile"):
        keys = tuple(os.path.expanduser(k) for k in cfg["identityfile"])
    user_known = _paths(cfg.get("userknownhostsfile"), (Path.home() / ".ssh" / "known_hosts",))
    global_known = _paths(cfg.get("globalknownhostsfile"), (GLOBAL_KNOWN_HOSTS,))
    strict = str(cfg.get("stricthostkeychecking", "ask")).lower()
    if accept_new_host_keys:
        accept, reason = True, "--accept-new-host-keys"
    elif strict in _ACCEPTING:
        accept, reason = True, f"StrictHostKeyChecking {strict} in {config_path}"
    else:
        accept, reason = False, ""
    return SshTarget(
        name=name,
        address=address or str(cfg.get("hostname") or name),
        port=int(_pick(port, DEFAULT_PORT, cfg.get("port"))),
        user=str(_pick(user, DEFAULT_USER, cfg.get("user"))),
        key_files=keys,
        known_hosts=user_known + global_known,
        accept_new=accept,
        accept_reason=reason,
        timeout=float(cfg.get("connecttimeout", CONNECT_TIMEOUT)),
    )


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` form, which ``ssh-keygen -lf`` prints for checking."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _policy(target: SshTarget) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    # paramiko ships no type information: its base classes are Any to mypy.
    class Refuse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                             key: paramiko.PKey) -> None:
            raise RemoteError(
                f"host {target.name}: unknown host key for {target.address} "
                f"({key.get_name()} {fingerprint(key)}); refused",
                hint="check the fingerprint on the host (ssh-keygen -lf "
                "/etc/ssh/ssh_host_*_key.pub), then add it to known_hosts or rerun with "
                "--accept-new-host-keys")

    class Record(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                             key: paramiko.PKey) -> None:
            record_host_key(target, hostname, key)

    return Record() if target.accept_new else Refuse()


def record_host_key(target: SshTarget, hostname: str, key: paramiko.PKey) -> None:
    """Append ``hostname``'s key to the first known_hosts file (atomically) and say so."""
    known = target.known_hosts[0]
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    if str(known) != os.devnull:
        with _record_lock:
            old = known.read_text(encoding="utf-8") if known.is_file() else ""
            sep = "" if not old or old.endswith("\n") else "\n"
            known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(known, old + sep + line, mode=0o600)
    log.warning("accepted the new host key of %s (%s %s %s) and recorded it in %s (%s)",
                target.name, hostname, key.get_name(), fingerprint(key), known,
                target.accept_reason)


def _transport(*args: Any, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport with the AES-GCM ciphers preferred (see ``_GCM_FIRST``)."""
    import paramiko

    transport = paramiko.Transport(*args, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = (tuple(c for c in _GCM_FIRST if c in offered)
                       + tuple(c for c in offered if c not in _GCM_FIRST))
    return transport


def connect(target: SshTarget) -> paramiko.SSHClient:
    """A connected paramiko client, or a :class:`RemoteError` (exit 6) saying why.

    Messages name the host and never carry key material or a passphrase.
    """
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_policy(target))
    try:
        for known in target.known_hosts:
            if known.is_file():
                client.get_host_keys().load(str(known))
        client.connect(target.address, port=target.port, username=target.user,
                       key_filename=list(target.key_files) or None,
                       look_for_keys=not target.key_files, allow_agent=not target.key_files,
                       timeout=target.timeout, banner_timeout=target.timeout,
                       auth_timeout=target.timeout, transport_factory=_transport)
    except RemoteError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise RemoteError(
            f"host {target.name}: the host key of {target.address} CHANGED "
            f"(now {exc.key.get_name()} {fingerprint(exc.key)}, known_hosts has "
            f"{fingerprint(exc.expected_key)}); refused",
            hint="the host was reinstalled or someone is in the middle: check the new "
            "fingerprint on the host before replacing the line in known_hosts") from None
    except paramiko.AuthenticationException:
        client.close()
        raise RemoteError(f"host {target.name}: SSH key refused for {target.where} "
                          f"(authentication as {target.user} failed)",
                          hint="check the key file / user, or the authorized_keys there"
                          ) from None
    except (OSError, EOFError) as exc:
        client.close()
        raise RemoteError(f"host {target.name} is unreachable ({target.where}: {reason(exc)})",
                          hint="check the address, port, routing and that sshd runs there"
                          ) from None
    except paramiko.SSHException as exc:
        client.close()
        raise RemoteError(f"host {target.name}: SSH to {target.where} failed: {reason(exc)}",
                          hint="check that sshd runs there and the address/port are right"
                          ) from None
    return client


def reason(exc: BaseException) -> str:
    """One short line for an SSH/OS failure."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    inner = list(getattr(exc, "errors", {}).values())  # paramiko's NoValidConnectionsError
    if inner:
        exc = inner[0]
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


# OpenSSH's keepalive under Ansible: a probe every 15 s, the link given up after 4 unanswered.
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 15, 4
# The ciphers OpenSSH under Ansible puts first, with `^` (OpenSSH's "at the head of the
# default list"): the rest of its defaults stay offered after them, so a server without
# AES-GCM still negotiates. OpenSSH's client default puts chacha20-poly1305 first; with the
# CPU's AES instructions AES-GCM is cheaper at both ends, and the bundle (hundreds of MB per
# host, a fleet's copies at once) goes over these connections: on the test bed one 104 MB copy
# cost 0.42 CPU-s of both ends together against 0.53 with chacha20-poly1305.
ANSIBLE_CIPHERS = "^" + ",".join(_GCM_FIRST)
SYSTEM_SSH_CONFIG = Path("/etc/ssh/ssh_config")
_INCLUDE_DEPTH = 16  # as OpenSSH's READCONF_MAX_DEPTH


def _sets_ciphers(path: Path, relative_to: Path, depth: int = 0) -> bool:
    """Whether the ssh config ``path`` (or a file it includes) has a ``Ciphers`` line, in
    any Host or Match block: a user's choice of ciphers is theirs, harborctl adds none then.
    ``Include`` paths that are relative are taken from ``relative_to`` (~/.ssh for a user's
    file, /etc/ssh for the system's), as OpenSSH does."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        words = line.replace("=", " ", 1).split()
        if not words:
            continue
        keyword = words[0].lower()
        if keyword == "ciphers":
            return True
        if keyword == "include" and depth < _INCLUDE_DEPTH:
            for word in words[1:]:
                pattern = Path(os.path.expanduser(word.strip('"')))
                if not pattern.is_absolute():
                    pattern = relative_to / pattern
                for found in sorted(glob.glob(str(pattern))):
                    if _sets_ciphers(Path(found), relative_to, depth + 1):
                        return True
    return False


def _user_sets_ciphers(ssh_config: Path | None) -> bool:
    """The files OpenSSH reads: the ``-F`` file alone, else ~/.ssh/config and the system's."""
    user_dir = Path.home() / ".ssh"
    if ssh_config is not None:
        return _sets_ciphers(ssh_config, user_dir)
    return (_sets_ciphers(user_dir / "config", user_dir)
            or _sets_ciphers(SYSTEM_SSH_CONFIG, SYSTEM_SSH_CONFIG.parent))


def ansible_ssh_args(ssh_config: Path | None, *, accept_new_host_keys: bool = False) -> str:
    """``ANSIBLE_SSH_ARGS``: the same policy for OpenSSH under Ansible.

    ``BatchMode yes`` turns OpenSSH's default "ask" into a refusal (nobody can answer a
    prompt here) while ``accept-new``/``no`` written in the user's config still apply;
    the option, when given, is passed as ``StrictHostKeyChecking accept-new``. AES-GCM is
    preferred (``ANSIBLE_CIPHERS``) unless the user's ssh config chooses ciphers itself.
    """
    # No -C (Ansible's default has it): the bundle is gzip already, and compressing it again
    # costs both ends CPU for nothing. Keepalives: a link that goes down and stays down is
    # noticed within a minute (the host is reported unreachable, and upgrade's reconnect
    # takes over) instead of a task hanging until TCP gives up; a live host answers them
    # even while a long command prints nothing.
    args = ([f"-F {shlex.quote(str(ssh_config))}"] if ssh_config is not None else []) + [
        "-o ControlMaster=auto", "-o ControlPersist=60s", "-o BatchMode=yes",
        f"-o ServerAliveInterval={KEEPALIVE_INTERVAL}", f"-o ServerAliveCountMax={KEEPALIVE_COUNT}"]
    if accept_new_host_keys:
        args.append("-o StrictHostKeyChecking=accept-new")
    # A -o on the command line would override the user's own Ciphers line (OpenSSH keeps
    # the first value it reads): where their config has one, it applies as written.
    if not _user_sets_ciphers(ssh_config):
        args.append(f"-o Ciphers={ANSIBLE_CIPHERS}")
    return " ".join(args)
