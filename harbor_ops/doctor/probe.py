"""The push probe: a real blob upload, manifest push, pull back and delete, as docker does.

Only a real push shows the problems that live in the upload path: an outer proxy's
``client_max_body_size`` (413 on the first layer over its limit), a proxy that passes
Authorization on GET but the registry never sees it on PATCH/PUT, an upload ``Location``
built from the wrong scheme or host, a storage that accepts a blob and then cannot serve
it. The layer is random and just over 2 MiB, so nginx's default 1 MiB limit trips.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from urllib.parse import urlsplit

from harbor_ops.doctor.checks import Skip, brief, probe_auth, require_registry, stripped
from harbor_ops.doctor.context import Context
from harbor_ops.doctor.findings import finding
from harbor_ops.doctor.wire import Endpoint, Response

LAYER_BYTES = 2 * 1024 * 1024 + 4096
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])


class ProbeFailed(Exception):
    """A step failed and its finding is recorded; the rest of the probe cannot run."""


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_push(ctx: Context) -> str:
    require_registry(ctx)
    if not ctx.opts.push_probe:
        raise Skip("--no-push-probe")
    if not ctx.credentials_ok:
        raise Skip("needs credentials that may travel (--username and a trusted TLS)")
    repo = ctx.opts.probe_repository
    headers = probe_auth(ctx, f"repository:{repo}:pull,push,delete")
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs":
                         {"type": "layers", "diff_ids": []}}).encode()
    layer = os.urandom(LAYER_BYTES)
    try:
        blobs = [_upload(ctx, repo, data, headers) for data in (config, layer)]
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": blobs[0], "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": blobs[1], "size": len(layer)}]}).encode()
        tag = f"doctor-{uuid.uuid4().hex[:12]}"
        _expect(ctx, ctx.wire_req("PUT", f"/v2/{repo}/manifests/{tag}", headers,
                                  manifest, {"Content-Type": OCI_MANIFEST}), 201,
                "manifest PUT", headers)
        back = ctx.wire_req("GET", f"/v2/{repo}/manifests/{tag}", headers, None,
                            {"Accept": OCI_MANIFEST})
        _expect(ctx, back, 200, "manifest GET", headers)
        if digest_of(back.body) != digest_of(manifest):
            _fail(ctx, "the manifest pulled back differs from the one pushed", brief(back))
        _pull_blob(ctx, repo, blobs[1], headers)
    except ProbeFailed:
        return "push probe failed"
    resp = ctx.wire_req("DELETE", f"/v2/{repo}/manifests/{digest_of(manifest)}", headers)
    if resp.status not in (200, 202):
        ctx.add(finding("probe-left-behind", f"the probe image {repo}:{tag} could not be "
                        "deleted", brief(resp), host=ctx.ep.hostport))
    return f"pushed, pulled and deleted {repo}:{tag} ({LAYER_BYTES} B layer)"


def _upload(ctx: Context, repo: str, data: bytes, headers: dict[str, str]) -> str:
    digest = digest_of(data)
    resp = ctx.wire_req("POST", f"/v2/{repo}/blobs/uploads/", headers, b"")
    _expect(ctx, resp, 202, "upload POST", headers)
    target = _location(ctx, resp.header("location"))
    sep = "&" if "?" in target else "?"
    resp = ctx.wire_req("PUT", f"{target}{sep}digest={digest}", headers, data,
                        {"Content-Type": "application/octet-stream"})
    if resp.status == 413:
        ctx.add(finding("body-too-large", f"a {len(data)} B blob upload was refused with 413 "
                        "Request Entity Too Large", brief(resp), host=ctx.ep.hostport))
        raise ProbeFailed
    _expect(ctx, resp, 201, "blob PUT", headers)
    return digest


def _location(ctx: Context, location: str) -> str:
    """The upload URL's path+query; a Location on another scheme/host is a finding."""
    parts = urlsplit(location)
    if parts.scheme:
        other = Endpoint.parse(location)
        if (other.scheme, other.host, other.port) != (ctx.ep.scheme, ctx.ep.host, ctx.ep.port):
            ctx.add(finding("upload-location-mismatch", "the registry sends uploads to "
                            f"{other.base}, not to {ctx.ep.base}",
                            f"Location: {parts.scheme}://{parts.netloc}{parts.path}",
                            host=ctx.ep.hostport))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _pull_blob(ctx: Context, repo: str, digest: str, headers: dict[str, str]) -> None:
    resp = ctx.wire_req("GET", f"/v2/{repo}/blobs/{digest}", headers, limit=LAYER_BYTES + 1)
    if resp.status == 404:
        ctx.add(finding("blob-unknown", f"the blob just pushed to {repo} cannot be read back",
                        f"{digest}: {brief(resp)}", host=ctx.ep.hostport))
        raise ProbeFailed
    _expect(ctx, resp, 200, "blob GET", headers)
    if digest_of(resp.body) != digest:
        _fail(ctx, "the blob pulled back differs from the one pushed", digest)


def _expect(ctx: Context, resp: Response, status: int, step: str,
            sent: dict[str, str]) -> None:
    if resp.status == status:
        return
    if stripped(ctx, resp, sent):
        if any(f.id == "auth-header-stripped" for f in ctx.report.findings):
            raise ProbeFailed  # already said by the auth check
        ctx.add(finding("auth-header-stripped", f"{step} was answered as if no credentials "
                        "were sent: a proxy drops the Authorization header",
                        f"{step} -> 401 {resp.header('www-authenticate')}",
                        host=ctx.ep.hostport))
        raise ProbeFailed
    _fail(ctx, f"{step} answered {resp.status}, expected {status}", brief(resp))


def _fail(ctx: Context, summary: str, evidence: str) -> None:
    ctx.add(finding("push-failed", summary, evidence, host=ctx.ep.hostport))
    raise ProbeFailed


def image_reference(image: str) -> tuple[str, str]:
    """``repo:tag`` / ``repo@digest`` / ``repo`` -> (repository, tag or digest)."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    if ":" in image.split("/")[-1]:
        repo, _, tag = image.rpartition(":")
        return repo, tag
    return image, "latest"


def check_image(ctx: Context) -> str:
    """Every blob an existing image names must be in the storage (docker pull needs all)."""
    if not ctx.opts.image:
        raise Skip("no --image")
    require_registry(ctx)
    repo, ref = image_reference(ctx.opts.image)
    headers = probe_auth(ctx, f"repository:{repo}:pull")
    resp = ctx.wire_req("GET", f"/v2/{repo}/manifests/{ref}", headers, None,
                        {"Accept": ACCEPT})
    if resp.status != 200:
        ctx.add(finding("blob-unknown" if resp.status == 404 else "push-failed",
                        f"{repo}:{ref} cannot be pulled", brief(resp), host=ctx.ep.hostport))
        return f"manifest GET -> {resp.status}"
    doc = json.loads(resp.body)
    blobs = ([doc["config"]] if "config" in doc else []) + list(doc.get("layers", []))
    missing = []
    for desc in blobs:
        head = ctx.wire_req("HEAD", f"/v2/{repo}/blobs/{desc['digest']}", headers)
        if head.status == 404:
            missing.append(str(desc["digest"]))
    if missing:
        ctx.add(finding("blob-unknown", f"{repo}:{ref} names {len(missing)} blob(s) the "
                        "storage does not have ('blob unknown' on pull)",
                        "HEAD 404: " + ", ".join(missing), host=ctx.ep.hostport))
    return f"{repo}:{ref}: {len(blobs) - len(missing)}/{len(blobs)} blobs present"
