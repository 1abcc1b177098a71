"""The bundle of Harbor 2.16.0, a release NEWER than harborctl's tables.

It is what `harborctl upgrade apply` learns a release from (harbor_ops.releases.learn). Of 2.16
only Harbor's main branch is known (reference/harbor-facts.md, main @ c50c7ddd6e, VERSION
v2.16.0): harbor-db's ENTRYPOINT ``15 18`` (§6), ``_version: 2.15.0`` in its harbor.yml.tmpl
(§2.2), no schema script after 0180 listed (§6). Everything else of the double is 2.15.2's;
nothing more of 2.16 is made up. The bundle builder (tests/bed/bundle) builds it from that
Release and it is cached beside the builder's bundles. This module lives outside
tests/bed/bundle on purpose: every file there is part of the key of every cached bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from packaging.version import Version

from harbor_ops.releases.versions import Release, release
from tests.bed.bundle import builder

UNRELEASED = Version("2.16.0")


def unreleased_release() -> Release:
    """2.16.0 as the double carries it (see the module docstring)."""
    return dataclasses.replace(release("2.15.2"), version=UNRELEASED, yml_version="2.15.0",
                               guide_oldest_from=Version("2.14.0"))


def build_unreleased(out_dir: Path) -> Path:
    """``out_dir/harbor-offline-installer-v2.16.0.tgz``, built or taken from the cache."""
    own = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
    folder = builder.cache_dir() / f"{builder.bundle_key()}-unreleased-{own}"
    cached = folder / f"harbor-offline-installer-v{UNRELEASED}.tgz"
    if not cached.is_file():
        with builder._lock(builder.cache_dir() / "build.lock"):
            if not cached.is_file():
                builder._build_with_engine([unreleased_release()], folder, None, 0)
    os.utime(folder)  # in use: the builder's prune keeps it
    out_dir.mkdir(parents=True, exist_ok=True)
    return builder.place(cached, out_dir)
