"""harborctl test bed: harbor-core's token service and its ``/v2/`` front, like Harbor's.

What it does like Harbor (reference/upgrade-doctor-facts.md §4; Harbor's
``src/server/middleware/v2auth``, ``src/core/service/token``):
* ``GET /service/token?service=harbor-registry&scope=...``: Basic credentials are checked against
  ``harbor_admin_password`` (user ``admin``); wrong ones get 401; the answer is
  ``{"token", "expires_in": 1800, "issued_at"}`` with an RS256 JWT (issuer
  ``harbor-token-issuer``, audience ``harbor-registry``, ``kid`` = the libtrust key id of the
  signing key) that the REAL distribution registry verifies against ``root.crt``;
* ``/v2/...``: nginx sends it here (as Harbor's does); without credentials the answer is 401
  ``Bearer realm="<scheme of external_url>://<request Host>/service/token",
  service="harbor-registry"`` (+ ``scope`` for a repository); a Bearer token goes to the
  registry untouched (the registry verifies it); Basic credentials are checked and, when
  right, replaced by a token core signs for what the request needs; wrong ones get
  ``Basic realm="harbor"``. The registry's own challenges get the same realm rewrite.
Stand-in limits: one user (admin, every action); anonymous gets no access at all (every
project is private); tokens are not checked by core before the registry sees them.
"""

import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import subprocess
import time
import urllib.parse

KEY = os.environ.get("HARBOR_TOKEN_KEY", "/etc/core/private_key.pem")
ISSUER = "harbor-token-issuer"
SERVICE = "harbor-registry"
EXPIRES = int(os.environ.get("TOKEN_EXPIRATION_SECONDS", "1800"))
REGISTRY = urllib.parse.urlsplit(os.environ.get("REGISTRY_URL", "http://registry:5000"))
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "authorization", "host",
               "content-length"}
REPO_PATH = re.compile(r"^/v2/(.+?)/(?:blobs|manifests|tags)/")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id() -> str:
    """libtrust's key id: base32 of the first 240 bits of sha256(DER public key), 4-char
    groups joined by ':' (what the registry computes from root.crt)."""
    der = subprocess.run(["openssl", "pkey", "-in", KEY, "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


_KID: list[str] = []


def sign_token(subject: str, access: list[dict]) -> tuple[str, int, str]:
    """(jwt, expires_in, issued_at) for ``subject`` with ``access``."""
    if not _KID:
        _KID.append(key_id())
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "kid": _KID[0]}
    claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + EXPIRES,
              "nbf": now, "iat": now, "jti": secrets.token_hex(8), "access": access}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY],
                         input=signing_input.encode(), capture_output=True, check=True).stdout
    issued = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{signing_input}.{_b64url(sig)}", EXPIRES, issued


def basic_user(header: str | None) -> tuple[str, str] | None:
    """(user, password) of a Basic header, or None."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, password


def password_ok(creds: tuple[str, str]) -> bool:
    expected = os.environ.get("HARBOR_ADMIN_PASSWORD", "")
    return creds[0] == "admin" and bool(expected) and secrets.compare_digest(creds[1], expected)


def parse_scopes(values: list[str]) -> list[dict]:
    """``repository:library/hello:pull,push`` -> Harbor's access entries."""
    access = []
    for value in values:
        for scope in value.split(" "):
            parts = scope.split(":")
            if len(parts) >= 3:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": [a for a in parts[-1].split(",") if a]})
    return access


def realm(host: str) -> str:
    scheme = urllib.parse.urlsplit(os.environ.get("EXT_ENDPOINT", "http://x")).scheme or "http"
    return f"{scheme}://{host}/service/token"


def needed_scope(method: str, path: str) -> list[dict]:
    """What a Basic-authenticated request needs in the token core signs for it."""
    if path.startswith("/v2/_catalog"):
        return [{"type": "registry", "name": "catalog", "actions": ["*"]}]
    match = REPO_PATH.match(path)
    if not match:
        return []
    actions = ["pull"] if method in ("GET", "HEAD") else (
        ["delete"] if method == "DELETE" else ["pull", "push"])
    return [{"type": "repository", "name": match.group(1), "actions": actions}]


def handle_token(handler) -> None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    creds = basic_user(handler.headers.get("Authorization"))
    if creds is not None and not password_ok(creds):
        handler.reply(401, json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                                   "message": "authentication required"}]}),
                      "application/json")
        return
    access = parse_scopes(query.get("scope", [])) if creds else []
    token, expires, issued = sign_token(creds[0] if creds else "", access)
    handler.reply(200, json.dumps({"token": token, "access_token": token,
                                   "expires_in": expires, "issued_at": issued}),
                  "application/json")


def handle_v2(handler) -> None:
    """Check or swap the credentials of one ``/v2/`` request, then proxy it to the registry."""
    auth = handler.headers.get("Authorization")
    host = handler.headers.get("Host", "")
    path = urllib.parse.urlsplit(handler.path).path
    if auth is None:
        scope = needed_scope(handler.command, path)
        extra = "".join(f',scope="{s["type"]}:{s["name"]}:{",".join(s["actions"])}"'
                        for s in scope if s["type"] == "repository")
        challenge(handler, f'Bearer realm="{realm(host)}",service="{SERVICE}"{extra}')
        return
    if not auth.startswith("Bearer "):
        creds = basic_user(auth)
        if creds is None or not password_ok(creds):
            challenge(handler, 'Basic realm="harbor"')
            return
        auth = "Bearer " + sign_token(creds[0], needed_scope(handler.command, path))[0]
    proxy(handler, auth, host)


def challenge(handler, value: str) -> None:
    body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                   "message": "unauthorized to access repository"}]}).encode()
    handler.send_response(401)
    handler.send_header("Www-Authenticate", value)
    handler.send_header("Docker-Distribution-Api-Version", "registry/2.0")
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class _Body:
    """The request body as a file http.client can stream (Content-Length or chunked)."""

    def __init__(self, rfile, length: int | None) -> None:
        self.rfile, self.left, self.chunk_left, self.done = rfile, length, 0, False

    def read(self, size: int = 65536) -> bytes:
        if self.left is not None:
            data = self.rfile.read(min(size, self.left)) if self.left > 0 else b""
            self.left -= len(data)
            return data
        if self.done:
            return b""
        if self.chunk_left == 0:
            line = self.rfile.readline()
            self.chunk_left = int(line.split(b";")[0].strip() or b"0", 16)
            if self.chunk_left == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                self.done = True
                return b""
        data = self.rfile.read(min(size, self.chunk_left))
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline()
        return data


def proxy(handler, auth: str, host: str) -> None:
    headers: dict[str, str] = {}
    for key, value in handler.headers.items():  # repeated headers (Accept) joined, not lost
        if key.lower() not in HOP_HEADERS:
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    headers.update({"Authorization": auth, "Host": host})
    length = handler.headers.get("Content-Length")
    chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
    body = None
    if length is not None or chunked:
        body = _Body(handler.rfile, int(length) if length is not None else None)
        if length is not None:
            headers["Content-Length"] = length
        else:
            headers["Transfer-Encoding"] = "chunked"
    conn = http.client.HTTPConnection(REGISTRY.hostname, REGISTRY.port or 80, timeout=300)
    try:
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers,
                         encode_chunked=chunked)
            resp = conn.getresponse()
        except OSError as exc:
            handler.log_message("registry unreachable: %s", exc)
            handler.reply(502, json.dumps({"errors": [{"code": "UNKNOWN",
                                                       "message": "registry unreachable"}]}),
                          "application/json")
            return
        handler.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() in ("connection", "transfer-encoding", "keep-alive"):
                continue
            if key.lower() == "www-authenticate":
                value = re.sub(r'realm="[^"]*"', f'realm="{realm(host)}"', value)
            handler.send_header(key, value)
        handler.end_headers()
        while handler.command != "HEAD":
            data = resp.read(65536)
            if not data:
                break
            handler.wfile.write(data)
    finally:
        conn.close()
