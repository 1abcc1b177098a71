"""Validators for rendered files: the real tools, run on temporary copies.

Why temporary copies and stand-ins: a render usually happens on a machine that is not
the target (no certificate files, no Harbor upstream name in DNS, no harborctl binary).
The validators therefore check the file as it will be installed, with only the
host-specific parts swapped for local stand-ins (named in the check's detail), and they
never touch real paths: nginx's cache folder and pid go to a temporary prefix. A tool
that is missing is reported as a skipped check with the reason, never as a pass.
"""

from __future__ import annotations

import datetime as dt
import grp
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from harbor_ops.core.errors import RenderError
from harbor_ops.site.model import FrontTLS, Site

TOOL_TIMEOUT = 60
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# systemd-analyze lines that only say "this host is not the target".
_SYSTEMD_HOST_ONLY = (
    re.compile(r"Command .* is not executable: No such file or directory"),
    re.compile(r"Unit \S+ not found"),
)
_SYSTEMD_NO_MANAGER = ("System has not been booted with systemd", "Failed to connect to bus")


@dataclass(frozen=True)
class Check:
    file: str
    validator: str
    status: str  # ok | skipped | failed
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "validator": self.validator, "status": self.status,
                "detail": self.detail}

    def __str__(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.file}: {self.validator} {self.status}{tail}"


def find_tool(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=path)


def _run(argv: list[str], tmp: Path) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                              check=False, env={**os.environ, "SYSTEMD_LOG_COLOR": "0",
                                                "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        return 124, f"{Path(argv[0]).name} did not finish in {TOOL_TIMEOUT}s"
    out = (proc.stdout + proc.stderr).replace(str(tmp), "<tmp>")
    return proc.returncode, out.strip()


def check_harbor_yml(text: str, doc: dict[str, Any]) -> Check:
    """Harbor's prepare reads harbor.yml with yaml.safe_load: it must read back ``doc``."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"harbor.yml: rendered text is not YAML ({exc})") from None
    if loaded != doc:
        raise RenderError("harbor.yml: rendered text does not read back as the built mapping")
    return Check("harbor.yml", "yaml round-trip", "ok")


def check_logrotate(text: str, *, uid: int) -> Check:
    """``logrotate -d``; where this host has no account for ``uid`` (logrotate resolves
    ``su`` through passwd), the su line is checked with the current user instead."""
    tool = find_tool("logrotate")
    if tool is None:
        return Check("logrotate/harbor", "logrotate -d", "skipped", "logrotate not installed")
    notes = []
    if not _has_account(uid):
        me = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
        text = re.sub(rf"^(\s*)su {uid} {uid}$", rf"\1su {me}", text, flags=re.M)
        notes.append(f"uid {uid} has no account on this host; su checked as {me!r} "
                     f"(the target host needs an account with uid {uid})")
    with tempfile.TemporaryDirectory(prefix="harborctl-logrotate-") as d:
        conf = Path(d) / "harbor"
        conf.write_text(text, encoding="utf-8")
        conf.chmod(0o644)
        rc, out = _run([tool, "-d", "-s", str(Path(d) / "state"), str(conf)], Path(d))
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    if rc != 0 or errors:
        return Check("logrotate/harbor", "logrotate -d", "failed",
                     "; ".join(errors) or out[-500:] or f"exit {rc}")
    return Check("logrotate/harbor", "logrotate -d", "ok", "; ".join(notes))


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        grp.getgrgid(uid)
    except KeyError:
        return False
    return True


def check_nginx(site: Site, variant: Callable[[Path, Any, str | None], str]) -> Check:
    """``nginx -t`` on a wrapper nginx.conf that includes the file inside http {}.

    ``variant(cache_path, tls, upstream_server)`` renders the file with stand-ins.
    """
    tool = find_tool("nginx")
    if tool is None:
        return Check("nginx/harbor.conf", "nginx -t", "skipped", "nginx not installed")
    assert site.front is not None
    notes = []
    with tempfile.TemporaryDirectory(prefix="harborctl-nginx-") as d:
        tmp = Path(d)
        tls = site.front.tls
        if tls is not None and not all(os.access(p, os.R_OK)
                                       for p in (tls.certificate, tls.private_key)):
            tls = _stand_in_tls(tmp)
            notes.append("certificate files are not on this host; checked with a stand-in pair")
        upstream = None
        host = urlsplit(site.front.upstream).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            upstream = "127.0.0.1:80"
            notes.append(f"upstream host {host!r} is not resolved here; checked as 127.0.0.1")
        (tmp / "harbor.conf").write_text(variant(tmp / "cache", tls, upstream), encoding="utf-8")
        (tmp / "nginx.conf").write_text(_NGINX_WRAPPER.format(d=d), encoding="utf-8")
        rc, out = _run([tool, "-t", "-q", "-p", f"{d}/", "-c", str(tmp / "nginx.conf"),
                        "-e", str(tmp / "error.log")], tmp)
    if rc != 0:
        return Check("nginx/harbor.conf", "nginx -t", "failed", out[-800:] or f"exit {rc}")
    return Check("nginx/harbor.conf", "nginx -t", "ok", "; ".join(notes))


_NGINX_WRAPPER = """\
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    access_log off;
    include {d}/harbor.conf;
}}
"""


def _stand_in_tls(folder: Path) -> FrontTLS:
    """A throw-away self-signed pair, only so that nginx -t can load a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harborctl-check")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    crt, pem = folder / "stand-in.crt", folder / "stand-in.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return FrontTLS(certificate=crt, private_key=pem)


def check_systemd(units: dict[str, str]) -> Check:
    """``systemd-analyze verify`` of the units under their real names.

    Missing binaries (harborctl, docker-compose) and missing docker.service only mean
    that this machine is not the target; they are reported in the detail, not failed.
    """
    label = ", ".join(sorted(units))
    tool = find_tool("systemd-analyze")
    if tool is None:
        return Check(label, "systemd-analyze verify", "skipped", "systemd-analyze not installed")
    with tempfile.TemporaryDirectory(prefix="harborctl-systemd-") as d:
        paths = []
        for name, text in units.items():
            path = Path(d) / Path(name).name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        rc, out = _run([tool, "verify", "--man=no", *paths], Path(d))
    lines = [line for line in out.splitlines() if line.strip()]
    if any(marker in out for marker in _SYSTEMD_NO_MANAGER):
        return Check(label, "systemd-analyze verify", "skipped", lines[0])
    host_only = [ln for ln in lines if any(p.search(ln) for p in _SYSTEMD_HOST_ONLY)]
    problems = [ln for ln in lines if ln not in host_only]
    if problems:
        return Check(label, "systemd-analyze verify", "failed", "; ".join(problems)[-800:])
    detail = "not on this host: " + "; ".join(host_only) if host_only else ""
    return Check(label, "systemd-analyze verify", "ok", detail)
