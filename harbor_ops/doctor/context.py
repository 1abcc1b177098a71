"""What one doctor run knows, shared by its checks (each check adds to it)."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from harbor_ops.doctor.findings import DoctorReport, Finding
from harbor_ops.doctor.tls import DOCKER_CERTS_DIR
from harbor_ops.doctor.wire import MAX_BODY, Endpoint, Response, Wire

PROBE_REPOSITORY = "library/harborctl-doctor"


@dataclass(frozen=True)
class DoctorOptions:
    url: str
    ca: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    push_probe: bool = True
    image: str | None = None  # repo:tag whose blobs must all be present
    resolve: dict[str, str] = field(default_factory=dict)  # name -> address
    timeout: float = 5.0
    docker_certs_dir: Path = DOCKER_CERTS_DIR
    probe_repository: str = PROBE_REPOSITORY


class Stop(Exception):
    """A check found a problem that makes the later checks meaningless."""


@dataclass
class Context:
    opts: DoctorOptions
    ep: Endpoint
    report: DoctorReport
    address: str = ""
    wire: Wire | None = None
    verified: ssl.SSLContext | None = None  # set when TLS is trusted: credentials may travel
    cafile: str | None = None
    challenge: tuple[str, dict[str, str]] | None = None
    first: Response | None = None  # the first answer from the registry (its Date header)
    token_issued: tuple[str, float] | None = None  # (issued_at, local time received)
    registry_ok: bool = True  # GET /v2/ answered like a registry (200 or a 401 challenge)

    def add(self, *found: Finding) -> None:
        self.report.findings.extend(found)

    @property
    def credentials_ok(self) -> bool:
        """Credentials are given and may be sent (plain http, or TLS the client trusts)."""
        return bool(self.opts.username and self.opts.password is not None) and \
            (self.ep.scheme == "http" or self.verified is not None)

    def basic(self) -> dict[str, str]:
        raw = f"{self.opts.username}:{self.opts.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return self.wire_req("GET", path, headers or {})

    def wire_req(self, method: str, target: str, auth: dict[str, str],
                 body: bytes | None = None, extra: dict[str, str] | None = None,
                 limit: int = MAX_BODY) -> Response:
        assert self.wire is not None
        return self.wire.request(method, target, headers={**auth, **(extra or {})}, body=body,
                                 limit=limit)
