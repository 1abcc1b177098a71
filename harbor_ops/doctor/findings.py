"""What doctor reports: findings with stable ids, and the record of each check it ran.

The ids, their severity and their fix are data (one table), so the text a user reads for
``tls-unknown-authority`` is the same wherever the check that found it runs, and scripts can
key on ``id`` across releases. ``evidence`` is what doctor saw on the wire, never a secret.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")

# id -> (severity, fix). The fix is the exact thing to change; {host} is host[:port].
CATALOG: dict[str, tuple[str, str]] = {
    "dns-failure": ("error", "make the registry name resolve on this machine (DNS or "
                    "/etc/hosts), or use the address the certificate names"),
    "tcp-unreachable": ("error", "start the registry front / open the port in the firewall, "
                        "or use the right port in the URL"),
    "timeout": ("error", "something between this machine and the registry drops packets: "
                "check firewalls, proxies and that the service answers"),
    "tls-unknown-authority": ("error", "trust the registry's CA: `harborctl trust --ca CA.crt` "
                              "(puts it in /etc/docker/certs.d/{host}/ca.crt, containerd and "
                              "podman), or pass --ca to doctor"),
    "tls-name-mismatch": ("error", "reissue the certificate with subjectAltName = DNS:<the name "
                          "clients use> (or IP:...), or use a name the certificate lists"),
    "tls-expired": ("error", "renew the certificate (and check this machine's clock)"),
    "tls-incomplete-chain": ("error", "serve the intermediate CA certificate(s) after the "
                             "server certificate in the certificate file"),
    "http-to-https": ("error", "use the scheme the port speaks: enable HTTPS on the registry, "
                      "or (plain HTTP only on a trusted network) list {host} in docker's "
                      "daemon.json insecure-registries"),
    "realm-mismatch": ("error", "set Harbor's external_url to the exact public URL clients use "
                       "(https://...), and make the TLS-terminating proxy send "
                       "X-Forwarded-Proto: https"),
    "external-url-mismatch": ("warning", "set external_url in harbor.yml to the URL clients "
                              "use, then run prepare and restart Harbor"),
    "upload-location-mismatch": ("error", "make the proxy pass Host and X-Forwarded-Proto "
                                 "unchanged so the registry builds upload URLs clients reach"),
    "auth-header-stripped": ("error", "let every proxy in front of the registry pass the "
                             "Authorization header (nginx: do not clear it; "
                             "proxy_pass_request_headers on)"),
    "auth-failed": ("error", "check the username and password (doctor --username, "
                    "--password-env/--password-file)"),
    "body-too-large": ("error", "set `client_max_body_size 0;` on the outer nginx (or the "
                       "ingress `proxy-body-size: \"0\"` annotation); Harbor's own nginx "
                       "already allows any size"),
    "clock-skew": ("error", "synchronise clocks with NTP on the registry host and this "
                   "machine (tokens and certificates are time-bound)"),
    "blob-unknown": ("error", "the storage lacks a blob the database names (GC race or a wrong "
                     "data_volume/mount): check the registry storage mount, then re-push the "
                     "image"),
    "push-failed": ("error", "read the registry's log for the request shown in the evidence"),
    "component-unhealthy": ("error", "start the component (docker compose ps / logs in Harbor's "
                            "install folder) and read its log"),
    "disk-low": ("error", "free space on the registry storage (run garbage collection, delete "
                 "old artifacts) or grow the volume"),
    "docker-ca-missing": ("warning", "put the CA in /etc/docker/certs.d/{host}/ca.crt "
                          "(`harborctl trust`) so docker on this machine trusts it too"),
    "probe-left-behind": ("warning", "delete the probe repository by hand in Harbor's UI"),
}


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    summary: str
    evidence: str
    fix: str


def finding(fid: str, summary: str, evidence: str = "", *, severity: str | None = None,
            host: str = "") -> Finding:
    """A finding from the catalog (its default severity and fix)."""
    default, fix = CATALOG[fid]
    return Finding(fid, severity or default, summary, evidence, fix.replace("{host}", host))


@dataclass
class CheckRecord:
    name: str
    status: str  # ok | warn | fail | skip
    seconds: float
    detail: str = ""


@dataclass
class DoctorReport:
    url: str
    findings: list[Finding] = field(default_factory=list)
    checks: list[CheckRecord] = field(default_factory=list)
    harbor: bool = False
    seconds: float = 0.0

    @property
    def worst(self) -> str:
        ranks = [SEVERITIES.index(f.severity) for f in self.findings]
        return SEVERITIES[max(ranks)] if ranks else "ok"

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "harbor": self.harbor, "seconds": round(self.seconds, 3),
                "findings": [asdict(f) for f in self.findings],
                "checks": [{**asdict(c), "seconds": round(c.seconds, 3)} for c in self.checks]}

    def __str__(self) -> str:
        lines = [f"doctor {self.url} ({'Harbor' if self.harbor else 'registry'}, "
                 f"{self.seconds:.1f} s)"]
        for c in self.checks:
            lines.append(f"  [{c.status:>4}] {c.name:<14} {c.detail}".rstrip())
        if not self.findings:
            lines.append("no problems found")
        for f in self.findings:
            lines.append(f"{f.severity.upper()} {f.id}: {f.summary}")
            if f.evidence:
                lines.append(f"    saw: {f.evidence}")
            lines.append(f"    fix: {f.fix}")
        return "\n".join(lines)
