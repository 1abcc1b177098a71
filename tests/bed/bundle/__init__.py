"""The Harbor-shaped offline installer: the test suite's one test double.

``build_bundle(version, out_dir, engine_env=None) -> Path`` and
``build_bundles(versions, out_dir, engine_env=None) -> dict[str, Path]``; see
:mod:`tests.bed.bundle.builder` for what is real and what is a stand-in.
"""
from tests.bed.bundle.builder import build_bundle, build_bundles, bundle_name

__all__ = ["build_bundle", "build_bundles", "bundle_name"]
