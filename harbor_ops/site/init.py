"""`harborctl init`: write a commented site file with safe defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harbor_ops.core.errors import UsageError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.releases.versions import release
from harbor_ops.site.load import example_text, load_site_text


@dataclass(frozen=True)
class InitResult:
    path: Path
    version: str
    hostname: str
    written: bool

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "version": self.version, "hostname": self.hostname,
                "written": self.written}

    def __str__(self) -> str:
        verb = "wrote" if self.written else "would write"
        return (f"{verb} {self.path} for Harbor {self.version} ({self.hostname}).\n"
                "Next: put the admin and database passwords in the environment variables it "
                "names (or switch to *_file), then run `harborctl render`.")


def init_site(*, path: Path, version: str | None = None, hostname: str | None = None,
              force: bool = False, dry_run: bool = False) -> InitResult:
    """Write the example site file, adapted to ``version`` and ``hostname``."""
    text = example_text()
    if version is not None:
        rel = release(version, field="--harbor-version")
        text = re.sub(r"(?m)^(  version: ).*$", rf"\g<1>{rel.version}", text, count=1)
    if hostname is not None:
        text = text.replace("harbor.example.internal", hostname)
    # Validate what we are about to write (a bad --hostname is refused here).
    site = load_site_text(text, source="generated site file", base_dir=path.parent)
    if path.exists() and not force:
        raise UsageError(f"--config: {path} already exists", hint="use --force to replace it")
    if not dry_run:
        atomic_write(path, text, mode=0o640)
    return InitResult(path=path, version=str(site.release.version), hostname=site.hostname,
                      written=not dry_run)
