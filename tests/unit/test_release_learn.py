"""Learning a release newer than harborctl's tables from its bundle (no docker load).

The bundles here are built byte by byte as Harbor's Makefile and ``docker save`` lay them
out: ``harbor/harbor.vX.Y.Z.tar.gz`` holding ``manifest.json``, one config JSON per image and
the layer tars (Docker 20.10's ``<id>/layer.tar`` and the OCI ``blobs/sha256/<hex>`` form).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.version import Version

from harbor_ops.core.errors import UpgradePathError
from harbor_ops.releases import learn, planner
from harbor_ops.releases import versions as hv
from harbor_ops.upgrade.learning import learn_up_to, site_target

V = "2.16.0"
TEMPLATE = """hostname: reg.mydomain.com
http:
  port: 80
harbor_admin_password: Harbor12345
database:
  password: root123
data_volume: /data
proxy:
  components:
    - core
    - registry
_version: 2.15.0
"""


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _migrations(*names: str) -> bytes:
    return _tar({f"harbor/migrations/postgresql/{n}": b"SELECT 1;\n" for n in names})


def _images(*, db_entry: list[str] | None = None, core_layers: list[bytes] | None = None,
            oci: bool = False, version: str = V, extra: dict[str, bytes] | None = None) -> bytes:
    """A docker save tarball with harbor-db and harbor-core (and a stub portal)."""
    files: dict[str, bytes] = {}
    manifest = []
    layers_of = {
        "harbor-db": [_tar({"usr/bin/postgres": b"x"})],
        "harbor-core": core_layers if core_layers is not None else [
            _migrations("0001_initial_schema.up.sql", "0180_2.15.0_schema.up.sql"),
            _migrations("0190_2.16.0_schema.up.sql")],
        "harbor-portal": [_tar({"index.html": b"<html>"})],
    }
    for name, layers in layers_of.items():
        entry = db_entry if db_entry is not None else ["/docker-entrypoint.sh", "15", "18"]
        config = {"config": {"Entrypoint": entry if name == "harbor-db" else ["/core"],
                             "Cmd": None}}
        paths = []
        for i, layer in enumerate(layers):
            if oci:
                data = gzip.compress(layer)
                path = f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"
            else:
                data, path = layer, f"{name}-{i}/layer.tar"
            files[path] = data
            paths.append(path)
        cfg = json.dumps(config).encode()
        cfg_path = (f"blobs/sha256/{hashlib.sha256(cfg).hexdigest()}" if oci
                    else f"{hashlib.sha256(cfg).hexdigest()}.json")
        files[cfg_path] = cfg
        manifest.append({"Config": cfg_path, "RepoTags": [f"goharbor/{name}:v{version}"],
                         "Layers": paths})
    files.update(extra or {})
    files["manifest.json"] = json.dumps(manifest).encode()
    return gzip.compress(_tar(files))


def bundle(folder: Path, *, version: str = V, template: str | None = TEMPLATE,
           images: bytes | None = None) -> Path:
    files = {f"harbor/{n}": b"#!/bin/bash\n" for n in ("install.sh", "prepare", "common.sh")}
    files["harbor/LICENSE"] = b"Apache-2.0\n"
    if template is not None:
        files["harbor/harbor.yml.tmpl"] = template.encode()
    files[f"harbor/harbor.v{version}.tar.gz"] = images if images is not None else _images(
        version=version)
    path = folder / f"harbor-offline-installer-v{version}.tgz"
    path.write_bytes(gzip.compress(_tar(files)))
    return path


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    yield
    for v in ("2.16.0", "2.16.1", "2.17.0"):
        hv.unregister(Version(v))


def test_the_four_facts_are_read_from_the_bundle(tmp_path: Path) -> None:
    got = learn.learn_bundle(bundle(tmp_path))
    assert (got.version, got.pg_from, got.pg_to) == (Version(V), "15", "18")
    assert (got.schema_version, got.schema_file) == (190, "0190_2.16.0_schema.up.sql")
    assert got.yml_version == "2.15.0"
    assert "proxy.components" in got.template_keys and "database.password" in got.template_keys
    assert got.images == ("harbor-core", "harbor-db", "harbor-portal")
    assert "converts PostgreSQL 15 -> 18; schema 190" in got.describe()
    assert "assumed as for 2.15.2" in got.describe()


def test_the_oci_form_with_gzip_layers_and_a_whiteout(tmp_path: Path) -> None:
    """A later layer deletes 0190: the highest file left is 0180."""
    layers = [_migrations("0180_2.15.0_schema.up.sql", "0190_2.16.0_schema.up.sql"),
              _tar({"harbor/migrations/postgresql/.wh.0190_2.16.0_schema.up.sql": b""})]
    got = learn.learn_bundle(bundle(tmp_path, images=_images(core_layers=layers, oci=True)))
    assert (got.schema_version, got.pg_to) == (180, "18")


def test_a_learned_release_plans_with_harbors_two_minor_rule(tmp_path: Path) -> None:
    bundle(tmp_path)
    learned = learn_up_to(Version(V), tmp_path)
    assert [str(x.version) for x in learned] == [V]
    rel = hv.release(V)
    assert (rel.data_layout, rel.converts_from, rel.schema_version, rel.yml_version) == (
        "pg18", "pg15", 190, "2.15.0")
    one = planner.plan(current="2.14.4", target=V)
    assert [(str(h.source), str(h.target), h.db_outcome) for h in one.hops] == [
        ("2.14.4", V, "convert")]
    two = planner.plan(current="2.13.5", target=V)  # 2.13 -> 2.16 skips three minors
    assert [str(h.target) for h in two.hops] == ["2.15.2", V]
    assert learn_up_to(Version(V), tmp_path) == []  # learned once per process


def test_nothing_is_learned_for_a_known_target_or_without_bundles(tmp_path: Path) -> None:
    bundle(tmp_path, images=b"not gzip")  # would refuse if it were read
    assert learn_up_to(Version("2.15.2"), tmp_path) == []
    assert learn_up_to(Version(V), None) == []
    with pytest.raises(Exception, match="not a known GA release.*learns a newer one"):
        hv.release("2.16.0")


def test_the_site_target_is_read_before_the_site_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "site.yml").write_text("harbor:\n  version: v2.16.0\n")
    assert site_target(tmp_path / "site.yml") == Version(V)
    (tmp_path / "bad.yml").write_text(": [")
    assert site_target(tmp_path / "bad.yml") is None


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"images": _images(db_entry=["/docker-entrypoint.sh"])},
     "does not name the PostgreSQL majors"),
    ({"images": _images(db_entry=["/docker-entrypoint.sh", "15", "18; rm -rf /"])},
     "are not PostgreSQL majors"),
    ({"images": _images(core_layers=[_tar({"harbor/core": b"x"})])},
     "harbor-core has no NNNN_X.Y.Z_schema.up.sql"),
    ({"images": _images(version="2.15.9")}, "no harbor-db image tagged v2.16.0"),
    ({"template": None}, "missing harbor/harbor.yml.tmpl"),
    ({"template": "- a list\n"}, "not a YAML mapping"),
    ({"template": TEMPLATE.replace("_version: 2.15.0", "_version: latest")},
     "_version 'latest' is not X.Y.Z"),
    ({"images": gzip.compress(_tar({"x": b"y"}))}, "no docker save manifest.json"),
])
def test_a_bundle_that_does_not_say_enough_is_refused(tmp_path: Path, kwargs: dict[str, object],
                                                      words: str) -> None:
    path = bundle(tmp_path, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UpgradePathError, match="does not say enough to learn it") as exc:
        learn.learn_bundle(path)
    assert words in exc.value.message
    assert "nothing was changed" in exc.value.message


def test_an_unknown_postgresql_layout_and_missing_template_keys_are_refused(
        tmp_path: Path) -> None:
    path = bundle(tmp_path, images=_images(db_entry=["/docker-entrypoint.sh", "18", "19"]))
    with pytest.raises(UpgradePathError, match="PostgreSQL 19, whose data layout"):
        learn.as_release(path, learn.learn_bundle(path))
    path = bundle(tmp_path, template=TEMPLATE.replace("data_volume: /data\n", ""))
    with pytest.raises(UpgradePathError, match="lacks data_volume"):
        learn.as_release(path, learn.learn_bundle(path))


def test_a_truncated_bundle_is_refused(tmp_path: Path) -> None:
    path = bundle(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UpgradePathError, match="truncated"):
        learn.learn_bundle(path)


def test_hostile_members_are_never_written_and_sizes_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = _tar({"../../../../tmp/evil": b"x", "/etc/evil": b"x",
                 "harbor/migrations/postgresql/../../../x/0999_9.9.9_schema.up.sql": b"x",
                 "harbor/migrations/postgresql/0185_2.15.5_schema.up.sql": b"x"})
    big = b"{" + b" " * (learn.MAX_JSON + 10) + b"}"
    path = bundle(tmp_path, images=_images(core_layers=[evil], extra={"huge.json": big}))
    monkeypatch.chdir(tmp_path)
    got = learn.learn_bundle(path)
    assert got.schema_version == 185  # the ../ name is not a migration of that folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    monkeypatch.setattr(learn, "MAX_MEMBERS", 5)
    with pytest.raises(UpgradePathError, match="more than 5 members"):
        learn.learn_bundle(path)
    monkeypatch.setattr(learn, "MAX_MEMBERS", 500_000)
    monkeypatch.setattr(learn, "MAX_IMAGE_BYTES", 4096)
    with pytest.raises(UpgradePathError, match="decompress to more than 4096 bytes"):
        learn.learn_bundle(path)
