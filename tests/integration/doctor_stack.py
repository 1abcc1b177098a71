"""A Harbor-shaped registry endpoint on loopback, broken on purpose one way at a time.

Real parts: the distribution registry (Debian ``docker-registry``) in token mode, real nginx
as the TLS front (and as the misbehaving outer proxy), real certificates, a real clock shift
(libfaketime preloaded into nginx), a real tmpfs for the storage. The one piece written here
is the Harbor core stand-in: a small HTTP server that issues ES256 JWTs the registry verifies
(``/service/token``, with Harbor's anonymous-token rule), and answers ``/api/v2.0/ping``,
``/health`` (a real probe of each component), ``/systeminfo`` and ``/systeminfo/volumes``
(``statvfs`` of the registry's storage, as Harbor's core does).

Everything listens on 127.0.0.1 with free ports; the name ``harbor.doctor.test`` reaches the
front only through doctor's ``--resolve`` (nothing touches /etc/hosts).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.bed._run import wait_for
from tests.bed.network import free_port, tcp_open
from tests.integration import doctor_pki as pki

HOST = "harbor.doctor.test"
ADMIN = "admin"
ADMIN_PASSWORD = "Doctor-Admin-Pw-7"
SERVICE = "harbor-registry"
ISSUER = "harbor-token-issuer"
REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")




def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Readiness: the port accepts a connection (bounded in time and tries, with headroom
    for a loaded machine: the wait ends at the first connection)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        return tcp_open("127.0.0.1", port)

    wait_for(ready, what=f"port {port}", timeout=timeout, interval=0.02)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Signs registry tokens like Harbor's core: ES256, ``kid`` = libtrust key id."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.bundle = folder / "token-root.crt"
        self.bundle.write_bytes(_self_signed(self.key))
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
        self.kid = ":".join(b32[i:i + 4] for i in range(0, 48, 4))

    def issue(self, subject: str, access: list[dict[str, object]], *,
              now: float | None = None) -> dict[str, object]:
        t = int(now if now is not None else time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": t + 1800,
                  "nbf": t - 5, "iat": t, "jti": uuid.uuid4().hex, "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{signing}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        return {"token": token, "access_token": token, "expires_in": 1800, "issued_at": issued}


def _self_signed(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The token key's certificate for the registry's ``rootcertbundle``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harbor-token-signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CoreState:
    tokens: TokenService
    storage: Path
    registry_port: int
    external_url: str = ""
    components: dict[str, int] = field(default_factory=dict)  # name -> TCP port
    intermediate_der: bytes = b""


class CoreHandler(http.server.BaseHTTPRequestHandler):
    """Harbor core's endpoints that doctor reads (and the AIA URL of the test PKI)."""

    server_version = "harbor-core-standin"
    protocol_version = "HTTP/1.1"
    state: CoreState  # set on the subclass per stack

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        parts = urlsplit(self.path)
        admin = self._user() == ADMIN
        if parts.path == "/service/token":
            self._token(parse_qs(parts.query))
        elif parts.path == "/api/v2.0/ping":
            self.reply(200, b"Pong", "text/plain")
        elif parts.path == "/api/v2.0/health":
            self.reply(200, json.dumps(self._health()).encode())
        elif parts.path == "/api/v2.0/systeminfo":
            info: dict[str, object] = {"auth_mode": "db_auth"}
            if admin:
                info.update({"harbor_version": "v2.15.2-doctor", "external_url":
                             self.state.external_url, "current_time": time.time()})
            self.reply(200, json.dumps(info).encode())
        elif parts.path == "/api/v2.0/systeminfo/volumes" and admin:
            st = os.statvfs(self.state.storage)
            self.reply(200, json.dumps({"storage": [{"total": st.f_blocks * st.f_frsize,
                                                     "free": st.f_bavail * st.f_frsize}]}).encode())
        elif parts.path == "/pki/intermediate.crt":
            self.reply(200, self.state.intermediate_der, "application/pkix-cert")
        else:
            self.reply(404 if parts.path.startswith("/api/") or admin else 401,
                       b'{"errors":[{"code":"NOT_FOUND"}]}')

    def _user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if (user, password) == (ADMIN, ADMIN_PASSWORD) else ""

    def _token(self, query: dict[str, list[str]]) -> None:
        user = self._user()
        if user == "":  # credentials given and wrong
            self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if user == ADMIN else \
                [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        # Harbor gives an anonymous caller a token too (without push rights).
        self.reply(200, json.dumps(self.state.tokens.issue(user or "", access)).encode())

    def _health(self) -> dict[str, object]:
        comps = [{"name": "core", "status": "healthy"}]
        ports = {"registry": self.state.registry_port, **self.state.components}
        for name, port in sorted(ports.items()):
            try:
                socket.create_connection(("127.0.0.1", port), 2).close()
                comps.append({"name": name, "status": "healthy"})
            except OSError as exc:
                comps.append({"name": name, "status": "unhealthy",
                              "error": f"failed to check the health status: {exc}"})
        ok = all(c["status"] == "healthy" for c in comps)
        return {"status": "healthy" if ok else "unhealthy", "components": comps}

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


@dataclass
class Front:
    """How the nginx front is set up for one test."""

    cert: str = "good"  # a name in Stack.pairs
    tls: bool = True
    max_body: str = "0"
    strip_auth: bool = False
    clock_offset: str | None = None  # FAKETIME, e.g. "+10m"
    host_header: str = "$http_host"  # nginx's $host drops the port: a classic misconfiguration


class Stack:
    """Registry + core stand-in + an nginx front that each test sets up its own way."""

    def __init__(self, tmp: Path, storage: Path) -> None:
        self.tmp = tmp
        self.storage = storage
        self.reg_port, self.core_port = free_port(), free_port()
        self.root = pki.ca("Doctor Test Root CA")
        self.intermediate = pki.ca("Doctor Test Intermediate CA", self.root)
        self.stranger = pki.ca("Some Other CA")
        self.ca_file = tmp / "root-ca.crt"
        self.ca_file.write_bytes(self.root.pem())
        aia = f"http://127.0.0.1:{self.core_port}/pki/intermediate.crt"
        certs = tmp / "certs"
        certs.mkdir()
        self.pairs = {
            "good": pki.write_pair(certs, "good",
                                   pki.leaf(self.intermediate, [HOST, "127.0.0.1"]),
                                   self.intermediate),
            "untrusted": pki.write_pair(certs, "untrusted", pki.leaf(self.stranger, [HOST])),
            "wrong-name": pki.write_pair(certs, "wrong-name",
                                         pki.leaf(self.intermediate, ["other.doctor.test"]),
                                         self.intermediate),
            "expired": pki.write_pair(certs, "expired",
                                      pki.leaf(self.intermediate, [HOST], expired=True),
                                      self.intermediate),
            "leaf-only": pki.write_pair(certs, "leaf-only",
                                        pki.leaf(self.intermediate, [HOST], aia_url=aia)),
        }
        self.tokens = TokenService(tmp)
        self.state = CoreState(self.tokens, storage, self.reg_port,
                               intermediate_der=self.intermediate.cert.public_bytes(
                                   serialization.Encoding.DER))
        handler = type("Handler", (CoreHandler,), {"state": self.state})
        self.core = http.server.ThreadingHTTPServer(("127.0.0.1", self.core_port), handler)
        self.core.daemon_threads = True
        threading.Thread(target=self.core.serve_forever, daemon=True).start()
        self.registry: subprocess.Popen[bytes] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None
        self.front_port = free_port()
        self.realm = ("", "")

    # -------------------------------------------------------------- registry
    def start_registry(self, *, realm_scheme: str = "https", realm_host: str = HOST) -> None:
        """The registry, its token realm built like Harbor's (external_url scheme + host)."""
        if self.registry is not None and self.registry.poll() is None and \
                (realm_scheme, realm_host) == self.realm:
            return
        stop(self.registry)
        self.realm = (realm_scheme, realm_host)
        base = f"{realm_scheme}://{realm_host}:{self.front_port}"
        self.state.external_url = base
        config = {
            "version": 0.1, "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.reg_port}", "secret": "test-only-not-secret"},
            "auth": {"token": {"realm": f"{base}/service/token", "service": SERVICE,
                               "issuer": ISSUER, "rootcertbundle": str(self.tokens.bundle)}},
        }
        (self.tmp / "registry.yml").write_text(json.dumps(config))
        log = open(self.tmp / "registry.log", "ab")  # noqa: SIM115 - owned by the process
        self.registry = subprocess.Popen([REGISTRY, "serve", str(self.tmp / "registry.yml")],
                                         stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.reg_port, self.registry)

    # -------------------------------------------------------------- nginx
    def start_front(self, front: Front) -> str:
        """(Re)start nginx as ``front`` says; returns the URL clients use."""
        stop(self.nginx)
        n = self.tmp / "nginx"
        n.mkdir(exist_ok=True)
        crt, key = self.pairs[front.cert]
        listen = f"127.0.0.1:{self.front_port}" + (" ssl" if front.tls else "")
        tls = f"ssl_certificate {crt};\n    ssl_certificate_key {key};\n" if front.tls else ""
        strip = 'proxy_set_header Authorization "";' if front.strip_auth else ""
        upstream = (f"proxy_set_header Host {front.host_header}; "
                    f"proxy_set_header X-Forwarded-Proto https; {strip} "
                    "proxy_request_buffering off; proxy_buffering off;")
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (n / "nginx.conf").write_text(
            f"{user}pid {n}/nginx.pid;\nerror_log {n}/error.log warn;\ndaemon off;\n"
            "events { worker_connections 128; }\n"
            f"http {{\n  client_body_temp_path {n}/body;\n  proxy_temp_path {n}/proxy;\n"
            f"  fastcgi_temp_path {n}/fcgi;\n  uwsgi_temp_path {n}/uwsgi;\n"
            f"  scgi_temp_path {n}/scgi;\n  access_log {n}/access.log;\n"
            f"  client_max_body_size {front.max_body};\n"
            f"  server {{\n    listen {listen};\n    server_name {HOST};\n    {tls}"
            f"    location /v2/ {{ proxy_pass http://127.0.0.1:{self.reg_port}; {upstream} }}\n"
            f"    location /service/ {{ proxy_pass http://127.0.0.1:{self.core_port}; "
            f"{upstream} }}\n"
            f"    location /api/ {{ proxy_pass http://127.0.0.1:{self.core_port}; {upstream} }}\n"
            "  }\n}\n")
        env = dict(os.environ)
        if front.clock_offset:
            env.update(LD_PRELOAD=str(FAKETIME_LIB), FAKETIME=front.clock_offset,
                       FAKETIME_DONT_RESET="1")
        self.nginx = subprocess.Popen([NGINX, "-p", f"{n}/", "-c", str(n / "nginx.conf"),
                                       "-e", str(n / "error.log")], env=env)
        wait_port(self.front_port, self.nginx)
        return f"{'https' if front.tls else 'http'}://{HOST}:{self.front_port}"

    @property
    def resolve(self) -> str:
        return f"{HOST}:127.0.0.1"

    def close(self) -> None:
        stop(self.nginx)
        stop(self.registry)
        self.core.shutdown()
        self.core.server_close()


def push_image(stack: Stack, repo: str, tag: str) -> list[str]:
    """Push a one-layer image straight to the registry (token as admin); returns digests."""
    base = f"http://127.0.0.1:{stack.reg_port}"
    token = stack.tokens.issue(ADMIN, [{"type": "repository", "name": repo,
                                        "actions": ["pull", "push"]}])["token"]
    auth = {"Authorization": f"Bearer {token}"}

    def call(method: str, url: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        req = urllib.request.Request(url if url.startswith("http") else base + url, data=data,
                                     method=method, headers={**auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                return resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers)

    digests = []
    for data in (b'{"architecture":"amd64","os":"linux"}', os.urandom(4096)):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers = call("POST", f"/v2/{repo}/blobs/uploads/", b"")
        assert status == 202, status
        loc = urlsplit(headers["Location"])
        status, _ = call("PUT", f"{loc.path}?{loc.query}&digest={digest}", data,
                         {"Content-Type": "application/octet-stream"})
        assert status == 201, status
        digests.append(digest)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digests[0], "size": 38},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digests[1], "size": 4096}]}).encode()
    status, _ = call("PUT", f"/v2/{repo}/manifests/{tag}", manifest,
                     {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201, status
    return digests
