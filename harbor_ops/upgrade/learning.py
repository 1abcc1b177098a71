"""`upgrade apply` to a release newer than harborctl's tables: learn it from --bundle-dir.

The site file's ``harbor.version`` names the target; when harborctl's tables end before it,
every bundle in the bundle folder between the newest known release and the target is read
(:mod:`harbor_ops.releases.learn`, nothing loaded) and registered for this run, before the
site file is loaded, so the planner, the renderer and the health gate treat the learned
releases as known ones. What was learned is reported; a bundle that does not say enough
refuses the run before anything changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from harbor_ops.core.errors import UpgradePathError
from harbor_ops.releases import learn, planner
from harbor_ops.releases import versions as hv
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site


def site_target(config: Path) -> Version | None:
    """``harbor.version`` as written (None when unreadable: load_site then says why)."""
    try:
        doc = yaml.safe_load(config.read_text(encoding="utf-8"))
        return Version(str(doc["harbor"]["version"]).lstrip("vV"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, InvalidVersion):
        return None


def learn_up_to(target: Version, bundle_dir: Path | None) -> list[learn.Learned]:
    """Learn and register every unknown release in ``bundle_dir`` up to ``target``."""
    if target <= hv.newest_known().version or bundle_dir is None or not bundle_dir.is_dir():
        return []
    named = planner.bundle_versions(sorted(p.name for p in bundle_dir.iterdir() if p.is_file()))
    out = []
    for version in sorted(v for v in named if hv.newest_known().version < v <= target):
        if hv.is_learned(version):
            continue
        path = bundle_dir / named[version]
        got = learn.learn_bundle(path)
        if got.version != version:
            raise UpgradePathError(f"{path.name} holds Harbor {got.version}, not {version}; "
                                   "nothing was changed",
                                   hint=f"replace it with harbor-offline-installer-v{version}.tgz")
        hv.register(learn.as_release(path, got))
        out.append(got)
    return out


def load_site_learning(config: Path, bundle_dir: Path | None) -> tuple[Site, list[dict[str, Any]]]:
    """The site file, after learning the releases up to its target from ``bundle_dir``."""
    target = site_target(config)
    learned = learn_up_to(target, bundle_dir) if target is not None else []
    return load_site(config), [{**x.to_dict(), "said": x.describe()} for x in learned]
