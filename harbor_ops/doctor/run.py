"""`harborctl doctor`: run the checks in order, time each, keep the last result.

The order is the order a client meets the registry (name, connection, TLS, challenge,
token, push, clock, Harbor's own API), so the first finding is usually the cause and the
later ones its consequences. A check that makes the rest meaningless stops the run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from harbor_ops.core.errors import UsageError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.paths import state_dir
from harbor_ops.doctor import checks, harbor, probe
from harbor_ops.doctor.context import PROBE_REPOSITORY, Context, DoctorOptions, Stop
from harbor_ops.doctor.findings import SEVERITIES, CheckRecord, DoctorReport, finding
from harbor_ops.doctor.probe import image_reference
from harbor_ops.doctor.wire import Endpoint
from harbor_ops.site.model import Site

LAST_RESULT = "doctor-last.json"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
PROBE_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})+")
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
REFERENCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|sha256:[a-f0-9]{64}")

CHECKS: list[tuple[str, Callable[[Context], str]]] = [
    ("dns", checks.check_dns),
    ("tcp", checks.check_tcp),
    ("tls", checks.check_tls),
    ("registry", checks.check_registry),
    ("harbor", checks.check_harbor),
    ("realm", checks.check_realm),
    ("auth", checks.check_auth),
    ("push-probe", probe.check_push),
    ("image", probe.check_image),
    ("clock", checks.check_clock),
    ("health", harbor.check_health),
    ("systeminfo", harbor.check_systeminfo),
]


def site_url(site: Site) -> str:
    """The URL clients use: external_url, else the front, else Harbor's own hostname."""
    if site.harbor.get("external_url"):
        return str(site.harbor["external_url"])
    if site.front is not None:
        scheme = "https" if site.front.tls else "http"
        return f"{scheme}://{site.front.server_name}:{site.front.listen_port}"
    port = (site.harbor.get(site.protocol) or {}).get("port")
    return f"{site.protocol}://{site.hostname}" + (f":{port}" if port else "")


def run_doctor(opts: DoctorOptions, *, keep_result: bool = True) -> DoctorReport:
    ep = Endpoint.parse(opts.url)
    if opts.timeout <= 0:
        raise UsageError(f"--timeout {opts.timeout}: must be more than 0 seconds")
    ctx = Context(opts=opts, ep=ep, report=DoctorReport(url=ep.base))
    t0 = time.monotonic()
    try:
        for name, check in CHECKS:
            if not _run_one(ctx, name, check):
                break
    finally:
        if ctx.wire is not None:
            ctx.wire.close()
    ctx.report.seconds = time.monotonic() - t0
    ctx.report.findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    if keep_result:
        save_last(ctx.report)
    return ctx.report


def _run_one(ctx: Context, name: str, check: Callable[[Context], str]) -> bool:
    """Run one check and record it; False when the run must stop here."""
    before = len(ctx.report.findings)
    t0 = time.monotonic()
    status, detail, go_on = "ok", "", True
    try:
        detail = check(ctx)
    except checks.Skip as exc:
        status, detail = "skip", str(exc)
    except Stop:
        go_on = False
    except TimeoutError as exc:
        ctx.add(finding("timeout", f"the {name} check got no answer within "
                        f"{ctx.opts.timeout:g} s", str(exc), host=ctx.ep.hostport))
        go_on = False
    except (OSError, http.client.HTTPException, ValueError) as exc:
        ctx.add(finding("tcp-unreachable", f"the {name} check lost the connection",
                        f"{type(exc).__name__}: {exc}", host=ctx.ep.hostport))
        go_on = False
    new = [f.severity for f in ctx.report.findings[before:]]
    if "error" in new:
        status = "fail"
    elif "warning" in new:
        status = "warn"
    if not detail and new:
        detail = ctx.report.findings[before].summary
    ctx.report.checks.append(CheckRecord(name, status, time.monotonic() - t0, detail))
    return go_on


def last_result_path() -> Path:
    return state_dir() / LAST_RESULT


def save_last(report: DoctorReport) -> None:
    """Kept (0600) for `harborctl support-bundle`; it holds no secret, but names hosts."""
    atomic_write(last_result_path(), json.dumps(report.to_dict(), indent=2) + "\n", mode=0o600)


def read_password(env: str | None, file: Path | None) -> str | None:
    """The password from an environment variable or a file, never from an argument."""
    if env and file:
        raise UsageError("give --password-env or --password-file, not both")
    if env:
        if env not in os.environ:
            raise UsageError(f"--password-env {env}: that environment variable is not set")
        return os.environ[env]
    if file:
        try:
            return file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--password-file {file}: {exc.strerror}") from None
    return None


def parse_resolve(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME:ADDRESS`` pairs (like curl's --resolve without the port)."""
    out = {}
    for v in values:
        name, sep, address = v.partition(":")
        if not sep or not name or not address:
            raise UsageError(f"--resolve {v!r}: use NAME:ADDRESS, e.g. harbor.local:127.0.0.2")
        out[name.lower()] = address
    return out


def doctor(*, site: Site | None, url: str | None, ca: Path | None, username: str | None,
           password_env: str | None, password_file: Path | None, push_probe: bool,
           image: str | None, resolve: tuple[str, ...], timeout: float,
           docker_certs_dir: Path | None,
           probe_repository: str = PROBE_REPOSITORY) -> DoctorReport:
    """The command's one entry: options from the command line and the site file."""
    if url is None:
        if site is None:
            raise UsageError("give --url or a site file (-c)")
        url = site_url(site)
    password = read_password(password_env, password_file)
    if password is not None and not username:
        raise UsageError("a password was given without --username")
    if image is not None:
        repo, ref = image_reference(image)
        if not REPOSITORY.fullmatch(repo) or not REFERENCE.fullmatch(ref):
            raise UsageError(f"--image {image!r}: use repository[:tag] or repository@sha256:"
                             "<digest> (lower-case repository)")
    if not PROBE_REPO.fullmatch(probe_repository):
        raise UsageError(f"--probe-repository {probe_repository!r}: use project/name in "
                         "lower case (a-z, 0-9, . _ -)")
    extra = {"docker_certs_dir": docker_certs_dir} if docker_certs_dir else {}
    opts = DoctorOptions(url=url, ca=ca, username=username, password=password,
                         push_probe=push_probe, image=image, resolve=parse_resolve(resolve),
                         timeout=timeout, probe_repository=probe_repository,
                         **extra)
    return run_doctor(opts)
