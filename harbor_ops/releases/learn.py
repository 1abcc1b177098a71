"""Learn a Harbor release newer than harborctl's tables from its offline installer.

An upgrade needs four facts per release (harbor-facts §6, §2.2): the PostgreSQL major its
``harbor-db`` converts from and to (the ENTRYPOINT arguments, ``["/docker-entrypoint.sh",
"15", "18"]``), the schema version its core migrates to (the highest
``NNNN_X.Y.Z_schema.up.sql`` under ``/harbor/migrations/postgresql/`` in the ``harbor-core``
image), and the ``_version`` and keys of its ``harbor.yml.tmpl``. All of them are in the
bundle, so they are read from it without ``docker load``: one streaming pass over the
bundle, the image tarball (a ``docker save``) inside it, and the layer tars inside that,
keeping only what is needed: small JSON members (the manifest and image configs), the
template, and the NAMES of migration files. Everything else (Docker/Compose minimums, install
flags, health components) is taken from the newest release harborctl knows, and said so.

The bundle is untrusted: no member is ever written anywhere (names are only compared), JSON
and the template are read only up to a fixed size, member counts and the decompressed bytes
are bounded, and a value becomes a fact only after it parsed as what it must be (digits, a
version). When a fact is missing the release is refused, never guessed.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from packaging.version import InvalidVersion, Version

from harbor_ops.core.errors import UpgradePathError
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.releases import versions as hv

MAX_JSON = 4 << 20  # a docker save manifest or image config; Harbor's are a few KB
MAX_TEMPLATE = 1 << 20  # harbor.yml.tmpl is about 15 KB
MAX_MEMBERS = 500_000  # members of the image tarball plus every layer
MAX_IMAGE_BYTES = 64 << 30  # decompressed images (Harbor 2.15's: about 2 GB)
MAX_KEY_DEPTH = 6
MIGRATIONS = "harbor/migrations/postgresql/"
_MIGRATION = re.compile(r"^(\d{1,6})_(\d+\.\d+\.\d+)_schema\.up\.sql$")
_MAJOR = re.compile(r"^\d{1,3}$")
_WHITEOUT, _OPAQUE = ".wh.", ".wh..wh..opq"


@dataclass(frozen=True)
class Learned:
    """What one bundle says about its release (see the module docstring)."""

    version: Version
    pg_from: str | None  # PostgreSQL major harbor-db converts from ("96" = 9.6), None: none
    pg_to: str
    schema_version: int
    schema_file: str
    yml_version: str
    template_keys: tuple[str, ...]
    images: tuple[str, ...]
    assumed_from: str  # the known release the other facts are taken from

    def to_dict(self) -> dict[str, Any]:
        return {"version": str(self.version), "harbor_db": {"from": self.pg_from,
                                                            "to": self.pg_to},
                "schema_version": self.schema_version, "schema_file": self.schema_file,
                "harbor_yml_version": self.yml_version,
                "harbor_yml_keys": list(self.template_keys), "images": list(self.images),
                "assumed_from": self.assumed_from}

    def describe(self) -> str:
        conv = (f"converts PostgreSQL {self.pg_from} -> {self.pg_to}" if self.pg_from
                else f"runs PostgreSQL {self.pg_to}, converts nothing")
        return (f"Harbor {self.version} learned from its bundle: harbor-db {conv}; schema "
                f"{self.schema_version} ({self.schema_file}); harbor.yml _version "
                f"{self.yml_version}, {len(self.template_keys)} keys; Docker/Compose "
                f"minimums, install flags and health components assumed as for "
                f"{self.assumed_from}")


def refuse(path: Path, what: str) -> UpgradePathError:
    return UpgradePathError(
        f"{path.name}: harborctl does not know this Harbor release and the bundle does not "
        f"say enough to learn it: {what}; nothing was changed",
        hint="use the complete harbor-offline-installer-vX.Y.Z.tgz of that release, or a "
             "harborctl that knows it")


@dataclass
class _Seen:
    """What the pass kept: small JSON members, per-layer migration entries, the template."""

    jsons: dict[str, bytes] = field(default_factory=dict)
    layers: dict[str, list[str]] = field(default_factory=dict)
    template: bytes | None = None
    members: int = 0
    image_bytes: int = 0


def learn_bundle(path: Path) -> Learned:
    """Learn the release in ``path`` (a checked offline installer) or raise UpgradePathError."""
    info = bundle_mod.inspect_bundle(path)
    if info.problems or info.version is None or info.image_tarball is None:
        raise refuse(path, "; ".join(info.problems) or "no image tarball")
    seen = _Seen()
    try:
        with gzip.open(path, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                if member.name.removeprefix("./") == "harbor/harbor.yml.tmpl":
                    seen.template = _read_small(tar, member, MAX_TEMPLATE)
                elif member.name.removeprefix("./") == info.image_tarball:
                    fh = tar.extractfile(member)
                    if fh is not None:
                        _walk_images(fh, seen)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise refuse(path, f"cannot read it ({exc})") from None
    return _facts(path, info.version, seen)


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | None:
    if not member.isfile() or member.size > limit:
        return None
    fh = tar.extractfile(member)
    return fh.read(limit + 1)[:limit] if fh is not None else None


def _count(seen: _Seen) -> None:
    seen.members += 1
    if seen.members > MAX_MEMBERS:
        raise tarfile.TarError(f"more than {MAX_MEMBERS} members in the images")


class _Bounded(io.RawIOBase):
    """The decompressed image tarball, cut off at MAX_IMAGE_BYTES (a gzip bomb stops)."""

    def __init__(self, raw: IO[bytes], seen: _Seen) -> None:
        self.raw, self.seen = raw, seen

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        self.seen.image_bytes += len(data)
        if self.seen.image_bytes > MAX_IMAGE_BYTES:
            raise tarfile.TarError(f"the images decompress to more than {MAX_IMAGE_BYTES} "
                                   "bytes")
        b[:len(data)] = data
        return len(data)


def _walk_images(fh: IO[bytes], seen: _Seen) -> None:
    with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
        stream = io.BufferedReader(_Bounded(gz, seen), 1 << 20)  # type: ignore[arg-type]
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _count(seen)
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                layer_like = name.endswith("layer.tar") or name.startswith("blobs/")
                if member.size <= MAX_JSON:
                    data = _read_small(tar, member, MAX_JSON) or b""
                    if data[:1] in (b"{", b"["):
                        seen.jsons[name] = data
                    elif layer_like:
                        _list_layer(io.BytesIO(data), name, seen)
                elif layer_like:
                    layer = tar.extractfile(member)
                    if layer is not None:
                        _list_layer(layer, name, seen)


def _list_layer(fh: IO[bytes], name: str, seen: _Seen) -> None:
    """Record the migration files (and whiteouts of them) one layer holds, in order."""
    buffered: Any = fh if hasattr(fh, "peek") else io.BufferedReader(fh)
    source: Any = (gzip.GzipFile(fileobj=buffered, mode="rb")
                   if buffered.peek(2)[:2] == b"\x1f\x8b" else buffered)
    entries: list[str] = []
    try:
        with tarfile.open(fileobj=source, mode="r|") as layer:
            for m in layer:
                _count(seen)
                inner = m.name.removeprefix("./").removeprefix("/")
                if inner.startswith(MIGRATIONS) and "/" not in inner[len(MIGRATIONS):]:
                    entries.append(inner[len(MIGRATIONS):])
    except (tarfile.ReadError, EOFError, zlib.error, OSError):
        return  # not a layer (a config blob too big for MAX_JSON is no tar either)
    if entries:
        seen.layers[name] = entries


def _facts(path: Path, version: Version, seen: _Seen) -> Learned:
    manifest = _json(seen, "manifest.json")
    if not isinstance(manifest, list):
        raise refuse(path, "the image tarball has no docker save manifest.json")
    db = _image(path, manifest, "harbor-db", version)
    core = _image(path, manifest, "harbor-core", version)
    pg_from, pg_to = _db_majors(path, _json(seen, str(db.get("Config"))))
    schema, schema_file = _schema(path, seen, core)
    yml_version, keys = _template(path, seen.template)
    tags = sorted({str(t) for e in manifest if isinstance(e, dict)
                   for t in (e.get("RepoTags") or []) if isinstance(t, str)})
    images = tuple(sorted({t.rsplit(":", 1)[0].rsplit("/", 1)[-1] for t in tags}))
    return Learned(version=version, pg_from=pg_from, pg_to=pg_to, schema_version=schema,
                   schema_file=schema_file, yml_version=yml_version, template_keys=keys,
                   images=images, assumed_from=str(hv.newest_known().version))


def _json(seen: _Seen, name: str) -> Any:
    data = seen.jsons.get(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _image(path: Path, manifest: list[Any], name: str, version: Version) -> dict[str, Any]:
    want = f"v{version}"
    for entry in manifest:
        if not isinstance(entry, dict):
            continue
        for tag in entry.get("RepoTags") or []:
            repo, _, t = str(tag).rpartition(":")
            if t == want and repo.rsplit("/", 1)[-1] == name:
                return entry
    raise refuse(path, f"no {name} image tagged {want} in its image tarball")


def _db_majors(path: Path, config: Any) -> tuple[str | None, str]:
    """(from, to) from harbor-db's ENTRYPOINT + CMD: [script, FROM, TO] as since 2.3."""
    cfg = config.get("config") if isinstance(config, dict) else None
    if not isinstance(cfg, dict):
        raise refuse(path, "harbor-db's image config is missing from the image tarball")
    argv = [*(cfg.get("Entrypoint") or []), *(cfg.get("Cmd") or [])]
    if len(argv) != 3 or not all(isinstance(a, str) for a in argv):
        raise refuse(path, f"harbor-db's ENTRYPOINT {json.dumps(argv)[:120]} does not name the "
                     "PostgreSQL majors it converts from and to")
    old, new = argv[1], argv[2]
    if not _MAJOR.match(new) or (old and not _MAJOR.match(old)):
        raise refuse(path, f"harbor-db's ENTRYPOINT arguments {old!r} {new!r} are not "
                     "PostgreSQL majors")
    return old or None, new


def _schema(path: Path, seen: _Seen, core: dict[str, Any]) -> tuple[int, str]:
    files: set[str] = set()
    for layer in core.get("Layers") or []:
        for entry in seen.layers.get(str(layer), []):
            if entry == _OPAQUE:
                files.clear()
            elif entry.startswith(_WHITEOUT):
                files.discard(entry[len(_WHITEOUT):])
            else:
                files.add(entry)
    numbered = sorted((int(m.group(1)), f) for f in files if (m := _MIGRATION.match(f)))
    if not numbered:
        raise refuse(path, f"harbor-core has no NNNN_X.Y.Z_schema.up.sql under /{MIGRATIONS}")
    return numbered[-1]


def _template(path: Path, raw: bytes | None) -> tuple[str, tuple[str, ...]]:
    if raw is None:
        raise refuse(path, "harbor/harbor.yml.tmpl is missing or larger than "
                     f"{MAX_TEMPLATE} bytes")
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise refuse(path, "harbor/harbor.yml.tmpl is not YAML") from None
    if not isinstance(doc, dict):
        raise refuse(path, "harbor/harbor.yml.tmpl is not a YAML mapping")
    version = str(doc.get("_version", ""))
    try:
        ok = len(Version(version).release) == 3 and version.count(".") == 2
    except InvalidVersion:
        ok = False
    if not ok:
        raise refuse(path, f"harbor.yml.tmpl's _version {version[:40]!r} is not X.Y.Z")
    return version, tuple(sorted(_keys(doc, "", 0)))


def _keys(doc: dict[Any, Any], prefix: str, depth: int) -> list[str]:
    out = []
    for k, v in doc.items():
        path = f"{prefix}{k}"
        out.append(path)
        if isinstance(v, dict) and depth < MAX_KEY_DEPTH:
            out += _keys(v, path + ".", depth + 1)
    return out


# --------------------------------------------------------------------------- as a release


def _layout(path: Path, major: str) -> str:
    layout = "9.6" if major == "96" else f"pg{major}"
    if layout not in hv.LAYOUTS:
        raise refuse(path, f"its harbor-db uses PostgreSQL {major}, whose data layout "
                     f"harborctl cannot check (known: {', '.join(hv.LAYOUTS)})")
    return layout


def as_release(path: Path, learned: Learned) -> hv.Release:
    """The learned release: the four facts from the bundle, the rest from the newest known
    release; the guide's oldest from-version is Harbor's rule, two minors back (RELEASES.md)."""
    base = hv.newest_known()
    v = learned.version
    if v <= base.version:
        raise refuse(path, f"Harbor {v} is not newer than {base.version}, yet unknown")
    missing = [k for k in ("hostname", "data_volume", "harbor_admin_password",
                           "database.password") if k not in learned.template_keys]
    if missing:
        raise refuse(path, "its harbor.yml.tmpl lacks " + ", ".join(missing)
                     + ", which harborctl writes")
    floor = Version(f"{v.major}.{max(0, v.minor - 2)}.0")
    return dataclasses.replace(
        base, version=v, yml_version=learned.yml_version,
        data_layout=_layout(path, learned.pg_to),
        converts_from=_layout(path, learned.pg_from) if learned.pg_from else None,
        guide_oldest_from=floor, schema_version=learned.schema_version,
        images=learned.images or base.images)
