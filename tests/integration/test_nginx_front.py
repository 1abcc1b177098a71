"""The rendered Nginx front, run by real nginx in front of a real distribution registry.

What a user would notice: pulls through the front are cached (HIT on repeat), yet a
client the registry refuses never gets a cached layer; uploads bigger than 1 MB pass;
/v2/, missing blobs and uploads are never cached.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harbor_ops.render import engine as render
from harbor_ops.site.model import Front, FrontCache
from tests.bed._run import wait_for
from tests.bed.fixtures import unavailable
from tests.bed.network import free_port
from tests.integration.doctor_stack import TokenService, stop
from tests.unit.test_render import make_site

pytestmark = pytest.mark.integration

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}
REPO = "library/hello"


def _need(path: str) -> None:
    if not Path(path).exists():
        unavailable(f"{path} is not installed (see .ci/provision)")




def _wait_http(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 120.0) -> None:
    """Readiness probe: any HTTP answer counts; bounded in time and tries (headroom for a
    loaded machine: the wait ends at the first answer)."""

    def answered() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before it was ready")
        try:
            urllib.request.urlopen(url, timeout=5).close()  # noqa: S310 - loopback only
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    wait_for(answered, what=url, timeout=timeout, interval=0.05)


@contextmanager
def _registry(tmp: Path, port: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The registry of ``tmp/registry.yml`` on ``port``, answering; yields the list of the
    fixture's processes (the registry first), every one stopped on exit, newest first."""
    procs: list[subprocess.Popen[bytes]] = []
    with open(tmp / "registry.log", "wb") as log:
        try:
            procs.append(subprocess.Popen([REGISTRY, "serve", str(tmp / "registry.yml")],
                                          stdout=log, stderr=subprocess.STDOUT))
            _wait_http(f"http://127.0.0.1:{port}/v2/", procs[-1])
            yield procs
        finally:
            for proc in reversed(procs):
                stop(proc)


class Client:
    """Tiny HTTP client over urllib that never raises on HTTP status codes."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(self, method: str, path: str, *, user: str | None = None,
                password: str | None = None, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith("http") else self.base + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if user is not None:
            token = base64.b64encode(f"{user}:{password or USERS[user]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _layer(size: int) -> bytes:
    """A gzip'd tar layer with one file of random bytes (incompressible: size survives)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = os.urandom(size)
        info = tarfile.TarInfo("hello.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(buf.getvalue())


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(c: Client, data: bytes) -> str:
    digest = _digest(data)
    status, headers, _ = c.request("POST", f"/v2/{REPO}/blobs/uploads/", user="alice", data=b"")
    assert status == 202, status
    location = headers["location"]
    if location.startswith("/"):
        location = c.base + location
    sep = "&" if "?" in location else "?"
    status, _, body = c.request("PUT", f"{location}{sep}digest={digest}", user="alice", data=data,
                                headers={"Content-Type": "application/octet-stream"})
    assert status == 201, (status, body[:300])
    return digest


def _start_front(tmp: Path, reg_port: int, front_port: int) -> subprocess.Popen[bytes]:
    """Real nginx running the rendered front (with a cache) before the registry."""
    site = make_site(front=Front(
        listen_address="127.0.0.1", listen_port=front_port, server_name="localhost",
        upstream=f"http://127.0.0.1:{reg_port}",
        cache=FrontCache(path=tmp / "cache", max_size="1g", inactive="7d")))
    text = render.render_texts(site, harbor_values=site.harbor, rel=site.release)[
        "nginx/harbor.conf"]
    (tmp / "harbor.conf").write_text(text)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\ndaemon off;\n"
        "events { worker_connections 128; }\n"
        f"http {{\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
        f"  fastcgi_temp_path {tmp}/fcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n"
        f"  scgi_temp_path {tmp}/scgi;\n  access_log {tmp}/access.log;\n"
        f"  include {tmp}/harbor.conf;\n}}\n")
    check = subprocess.run([NGINX, "-t", "-p", f"{tmp}/", "-c", str(tmp / "nginx.conf"),
                            "-e", str(tmp / "error.log")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-p", f"{tmp}/", "-c", str(tmp / "nginx.conf"),
                             "-e", str(tmp / "error.log")])
    _wait_http(f"http://127.0.0.1:{front_port}/v2/", proc)
    return proc


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    _need(REGISTRY)
    _need(NGINX)
    if shutil.which("htpasswd") is None:
        unavailable("htpasswd (apache2-utils) is not installed (see .ci/provision)")
    tmp = tmp_path_factory.mktemp("front")
    htpasswd = "".join(subprocess.run(["htpasswd", "-Bbn", user, pw], check=True,
                                      capture_output=True, text=True).stdout.strip() + "\n"
                       for user, pw in USERS.items())
    (tmp / "htpasswd").write_text(htpasswd)
    reg_port, front_port = free_port(), free_port()
    (tmp / "registry.yml").write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{reg_port}", "secret": "test-only-not-secret"},
        "auth": {"htpasswd": {"realm": "test-registry", "path": str(tmp / "htpasswd")}},
    }))
    with _registry(tmp, reg_port) as procs:
        procs.append(_start_front(tmp, reg_port, front_port))
        c = Client(f"http://127.0.0.1:{front_port}")
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        layer = _layer(1_500_000)  # > 1 MB: would be a 413 without client_max_body_size 0
        cfg_digest, layer_digest = _push_blob(c, config), _push_blob(c, layer)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cfg_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": len(layer)}]}).encode()
        status, _, body = c.request(
            "PUT", f"/v2/{REPO}/manifests/v1", user="alice", data=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 201, (status, body[:300])
        yield {"client": c, "layer": layer, "digest": layer_digest, "tmp": tmp,
               "port": front_port}


def _blob(f: dict, **kw) -> tuple[int, dict[str, str], bytes]:  # type: ignore[type-arg]
    return f["client"].request("GET", f"/v2/{REPO}/blobs/{f['digest']}", **kw)


def test_authenticated_pull_fills_the_cache_then_hits(front) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = _blob(front, user="alice")
    assert status == 200
    assert headers["x-cache-status"] == "MISS"
    assert body == front["layer"]
    status, headers, body = _blob(front, user="alice")
    assert (status, headers["x-cache-status"]) == (200, "HIT")
    assert body == front["layer"]


def test_cached_blob_is_never_served_without_credentials(front) -> None:  # type: ignore[no-untyped-def]
    _blob(front, user="alice")
    _blob(front, user="alice")
    status, headers, body = _blob(front)
    assert status == 401
    assert headers.get("x-cache-status") != "HIT"
    assert "www-authenticate" in headers  # the client can still learn how to log in
    assert front["layer"] not in body


def test_wrong_password_gets_401_not_the_cached_blob(front) -> None:  # type: ignore[no-untyped-def]
    _blob(front, user="alice")
    status, headers, _ = _blob(front, user="alice", password="wrong")
    assert status == 401
    assert headers.get("x-cache-status") != "HIT"


def test_a_blob_cached_for_one_user_is_served_to_another_authorised_one(front) -> None:  # type: ignore[no-untyped-def]
    _blob(front, user="alice")
    status, headers, body = _blob(front, user="bob")
    assert (status, headers["x-cache-status"]) == (200, "HIT") and body == front["layer"]


def test_head_of_a_blob_is_answered_by_the_registry(front) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = front["client"].request(
        "HEAD", f"/v2/{REPO}/blobs/{front['digest']}", user="alice")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(front["layer"])
    assert headers["x-cache-status"] == "BYPASS"


def test_missing_blob_is_404_and_never_cached(front) -> None:  # type: ignore[no-untyped-def]
    missing = _digest(b"not pushed")
    for _ in range(2):
        status, headers, _ = front["client"].request(
            "GET", f"/v2/{REPO}/blobs/{missing}", user="alice")
        assert status == 404
        assert headers.get("x-cache-status") != "HIT"


def test_v2_root_and_manifests_are_never_cached(front) -> None:  # type: ignore[no-untyped-def]
    c = front["client"]
    for path in ("/v2/", f"/v2/{REPO}/manifests/v1"):
        for _ in range(2):
            status, headers, _ = c.request(
                "GET", path, user="alice",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert status == 200
            assert "x-cache-status" not in headers
    status, _, _ = c.request("GET", "/v2/")
    assert status == 401


def test_only_blob_bodies_are_stored_on_disk(front) -> None:  # type: ignore[no-untyped-def]
    _blob(front, user="alice")
    front["client"].request("GET", "/v2/", user="alice")
    stored = [p for p in (front["tmp"] / "cache").rglob("*") if p.is_file()]
    assert stored, "the cache holds nothing"
    keys = [p.read_bytes().split(b"\nKEY: ", 1)[1].split(b"\n", 1)[0] for p in stored]
    assert all(f"/v2/{REPO}/blobs/sha256:".encode() in k for k in keys), keys


def test_v1_is_refused(front) -> None:  # type: ignore[no-untyped-def]
    status, _, _ = front["client"].request("GET", "/v1/_ping")
    assert status == 404


def test_skopeo_pulls_the_image_through_the_front(front, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        unavailable("skopeo is not installed (see .ci/provision)")
    auth = tmp_path / "auth.json"
    token = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"127.0.0.1:{front['port']}": {"auth": token}}}))
    out = tmp_path / "pulled"
    proc = subprocess.run([skopeo, "copy", "--src-tls-verify=false", "--authfile", str(auth),
                           f"docker://127.0.0.1:{front['port']}/{REPO}:v1", f"dir:{out}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / front["digest"].split(":", 1)[1]).read_bytes() == front["layer"]


# ----------------------------------------------------------------- Harbor's own auth
# The registry in token mode, as Harbor runs it: JWTs signed by the token service's key
# (made here), the key's certificate as the registry's rootcertbundle, and a fresh token
# for every pull, as Docker clients present.


@pytest.fixture(scope="module")
def token_front(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.integration.doctor_stack import ISSUER, SERVICE

    _need(REGISTRY)
    _need(NGINX)
    tmp = tmp_path_factory.mktemp("token-front")
    tokens, forger = TokenService(tmp), TokenService(tmp_path_factory.mktemp("forger"))
    forger.kid = tokens.kid  # claims to be the real key; signed by another
    reg_port, front_port = free_port(), free_port()
    (tmp / "registry.yml").write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}},
        "http": {"addr": f"127.0.0.1:{reg_port}", "secret": "test-only-not-secret"},
        "auth": {"token": {"realm": f"http://127.0.0.1:{front_port}/service/token",
                           "service": SERVICE, "issuer": ISSUER,
                           "rootcertbundle": str(tokens.bundle)}},
    }))
    with _registry(tmp, reg_port) as procs:
        layer = _layer(300_000)
        digest = _digest(layer)
        registry = Client(f"http://127.0.0.1:{reg_port}")
        push = {"Authorization": "Bearer " + str(tokens.issue("admin", [
            {"type": "repository", "name": REPO, "actions": ["pull", "push"]}])["token"])}
        status, headers, _ = registry.request("POST", f"/v2/{REPO}/blobs/uploads/", data=b"",
                                              headers=push)
        assert status == 202, status
        location = headers["location"]
        location = location if location.startswith("http") else registry.base + location
        sep = "&" if "?" in location else "?"
        status, _, body = registry.request(
            "PUT", f"{location}{sep}digest={digest}", data=layer,
            headers={**push, "Content-Type": "application/octet-stream"})
        assert status == 201, (status, body[:300])
        procs.append(_start_front(tmp, reg_port, front_port))
        yield {"client": Client(f"http://127.0.0.1:{front_port}"), "tokens": tokens,
               "forger": forger, "layer": layer, "digest": digest, "log": tmp / "registry.log"}


def _pull(f: dict, tokens: TokenService | None, repo: str = REPO,  # type: ignore[type-arg]
          who: str = "alice") -> tuple[int, dict[str, str], bytes]:
    """GET the blob with a token made for this one pull (None: no token at all)."""
    headers = {}
    if tokens is not None:
        token = tokens.issue(who, [{"type": "repository", "name": repo, "actions": ["pull"]}])
        headers["Authorization"] = f"Bearer {token['token']}"
    return f["client"].request("GET", f"/v2/{REPO}/blobs/{f['digest']}", headers=headers)


def _registry_gets(f: dict) -> int:  # type: ignore[type-arg]
    """Blob GETs the registry itself answered with 200 (its access log)."""
    line = f'"GET /v2/{REPO}/blobs/{f["digest"]} HTTP/1.1" 200'
    return f["log"].read_text(errors="replace").count(line)


def test_second_client_with_a_fresh_token_is_served_from_the_cache(token_front) -> None:  # type: ignore[no-untyped-def]
    before = _registry_gets(token_front)
    first = _pull(token_front, token_front["tokens"], who="alice")
    second = _pull(token_front, token_front["tokens"], who="bob")
    assert (first[0], first[1]["x-cache-status"]) == (200, "MISS")
    assert (second[0], second[1]["x-cache-status"]) == (200, "HIT")
    assert first[2] == second[2] == token_front["layer"]
    assert _registry_gets(token_front) - before == 1  # one fetch from the registry


@pytest.mark.parametrize("case", ["no token", "token for another repository", "forged token"])
def test_a_cached_blob_is_never_served_without_a_valid_token(token_front, case: str) -> None:  # type: ignore[no-untyped-def]
    _pull(token_front, token_front["tokens"])
    assert _pull(token_front, token_front["tokens"])[1]["x-cache-status"] == "HIT"
    tokens = {"no token": None, "token for another repository": token_front["tokens"],
              "forged token": token_front["forger"]}[case]
    repo = "library/other" if case == "token for another repository" else REPO
    status, headers, body = _pull(token_front, tokens, repo=repo)
    assert status in (401, 403), status
    assert headers.get("x-cache-status") != "HIT"
    assert token_front["layer"] not in body
    assert "bearer" in headers.get("www-authenticate", "").lower()
