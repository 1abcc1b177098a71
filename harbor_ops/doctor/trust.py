"""`harborctl trust`: the registry's CA where every client runtime looks for it.

``x509: certificate signed by unknown authority`` is the most reported registry error, and
its fix is a file in three places per client (docker, containerd, containers/image) that
people write by hand, one host at a time. Here one playbook writes them on every client of
an inventory, idempotently; afterwards ``doctor`` on that client finds no TLS problem.
The CA comes from ``--ca``, else the last certificate of the site's chain file, else
Harbor's ``/api/v2.0/systeminfo/getcert`` (then its fingerprint is shown to compare).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from harbor_ops.core.errors import RemoteError, UsageError
from harbor_ops.core.paths import log_dir
from harbor_ops.doctor.run import site_url
from harbor_ops.doctor.wire import Endpoint, Wire
from harbor_ops.hosts import playbook as runner
from harbor_ops.site.model import Site

PLAYBOOK = "trust.yml"
GETCERT = "/api/v2.0/systeminfo/getcert"


@dataclass
class TrustResult:
    registry: str
    ca_subject: str
    ca_sha256: str
    source: str
    check: bool
    hosts: dict[str, runner.HostTally] = field(default_factory=dict)
    elapsed: float = 0.0
    log_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"registry": self.registry, "ca_subject": self.ca_subject,
                "ca_sha256": self.ca_sha256, "source": self.source, "check": self.check,
                "hosts": {h: t.to_dict() for h, t in self.hosts.items()},
                "seconds": round(self.elapsed, 3), "log": str(self.log_path or "")}

    def __str__(self) -> str:
        verb = "would change" if self.check else "changed"
        lines = [f"CA {self.ca_subject} (sha256 {self.ca_sha256}) from {self.source} "
                 f"for {self.registry}, {len(self.hosts)} host(s) in {self.elapsed:.1f} s"]
        lines += [f"  {h}: ok={t.ok} {verb}={t.changed} failed={t.failed}"
                  for h, t in self.hosts.items()]
        return "\n".join(lines)


def pick_ca(site: Site | None, ca: Path | None, url: str, timeout: float
            ) -> tuple[x509.Certificate, str]:
    """The CA certificate and where it came from."""
    if ca is not None:
        return _last_ca(ca.read_bytes(), f"--ca {ca}"), f"--ca {ca}"
    if site is not None:
        chains = [site.front.tls.certificate] if site.front and site.front.tls else []
        https = site.harbor.get("https") or {}
        chains += [Path(str(https["certificate"]))] if https.get("certificate") else []
        for chain in chains:
            try:
                return _last_ca(chain.read_bytes(), str(chain)), str(chain)
            except OSError as exc:
                raise UsageError(f"cannot read certificate {chain}: {exc.strerror}") from None
    ep = Endpoint.parse(url)
    wire = Wire(ep, address=ep.host, timeout=timeout)
    try:
        resp = wire.request("GET", GETCERT)
    except OSError as exc:
        raise RemoteError(f"cannot fetch the CA from {ep.base}{GETCERT}: {exc}",
                          hint="pass --ca FILE") from None
    finally:
        wire.close()
    if resp.status != 200:
        raise RemoteError(f"{ep.base}{GETCERT} answered {resp.status} (no CA configured?)",
                          hint="pass --ca FILE")
    where = f"{ep.base}{GETCERT} (unverified: compare the fingerprint)"
    return _last_ca(resp.body, where), where


def _last_ca(data: bytes, where: str) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError(f"{where}: not a PEM certificate file") from None
    last = certs[-1]
    try:
        is_ca = last.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca and last.issuer != last.subject:
        raise UsageError(f"{where}: the last certificate ({last.subject.rfc4514_string()}) is "
                         f"issued by {last.issuer.rfc4514_string()}, which is not in the file",
                         hint="pass the CA with --ca FILE")
    return last


def trust(site: Site | None, *, url: str | None, ca: Path | None, clients: Path | None,
          ssh_config: Path | None, dry_run: bool, os_store: bool, timeout: float = 10.0,
          accept_new_host_keys: bool = False,
          progress: Callable[[str], None] = lambda _: None) -> TrustResult:
    if url is None and site is None:
        raise UsageError("give --url or a site file (-c)")
    if clients is None and site is None:
        raise UsageError("give --clients INVENTORY or a site file (-c) with hosts:")
    url = url or site_url(site)  # type: ignore[arg-type]
    registry = Endpoint.parse(url).hostport
    cert, source = pick_ca(site, ca, url, timeout)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    started = time.monotonic()
    logs = log_dir()
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path, output_path = logs / f"trust-{stamp}.log", logs / f"trust-{stamp}.out"
    work = Path(tempfile.mkdtemp(prefix="harborctl-trust-"))
    try:
        argv, env = runner.build_command(
            playbook=runner.playbook_path(PLAYBOOK), work_dir=work, log_path=log_path,
            hosts=site.hosts if site is not None and clients is None else (),
            inventory=clients, check=dry_run, ssh_config=ssh_config,
            accept_new_host_keys=accept_new_host_keys,
            extra_vars={"harbor_trust_registry": registry, "harbor_trust_ca_pem": pem,
                        "harbor_trust_os_store": os_store})
        run = runner.run_playbook(argv, env, output_path=output_path, cwd=work,
                                  timeout=600)
        for line in run:
            progress(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outcome = run.outcome
    if not outcome.ok:
        lines = "\n".join(f"  - {f}" for f in outcome.failures) or \
            f"  ansible-playbook exited with {outcome.returncode}"
        raise RemoteError(f"trust failed:\n{lines}", hint=f"full Ansible log: {log_path}")
    return TrustResult(registry=registry, ca_subject=cert.subject.rfc4514_string(),
                       ca_sha256=cert.fingerprint(hashes.SHA256()).hex(), source=source,
                       check=dry_run, hosts=outcome.hosts, elapsed=time.monotonic() - started,
                       log_path=log_path)
