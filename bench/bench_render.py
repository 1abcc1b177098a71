"""Time to render every file for all 16 minor lines, in memory and through the CLI path.

Prints: in-memory rendering of all files for the latest patch of each minor line, and
the full `render_site` (validators: nginx -t, logrotate -d, systemd-analyze) for one
release, for scale. Run: .venv/bin/python -m bench.bench_render
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from harbor_ops.render.engine import render_all_versions, render_site
from harbor_ops.site.load import example_text, load_site_text


def main() -> None:
    os.environ.setdefault("HARBOR_ADMIN_PASSWORD", "bench-admin")
    os.environ.setdefault("HARBOR_DB_PASSWORD", "bench-db")
    site = load_site_text(example_text())
    samples = []
    for _ in range(10):
        t0 = time.perf_counter()
        texts = render_all_versions(site)
        samples.append(time.perf_counter() - t0)
    files = sum(len(v) for v in texts.values())
    print(f"render all files, {len(texts)} minor lines ({files} files), in memory: "
          f"{statistics.median(samples) * 1000:.1f} ms (median of 10)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        render_site(site, output_dir=Path(tmp))
        full = time.perf_counter() - t0
    print(f"render_site for one release with every validator: {full * 1000:.0f} ms")
    print(f"ratio all-16-lines (no validators) / one validated release: "
          f"{statistics.median(samples) / full:.2f}")


if __name__ == "__main__":
    main()
