"""`harborctl --help` start-up time against `python -c "import click"`, same run.

Goal: ratio under 4 (nothing heavy imported at start-up). Prints medians of N runs.
Run: .venv/bin/python -m bench.bench_startup [N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time


def _median_seconds(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    harborctl = shutil.which("harborctl") or str(
        __import__("pathlib").Path(sys.executable).with_name("harborctl"))
    ref = _median_seconds([sys.executable, "-c", "import click"], runs)
    ours = _median_seconds([harborctl, "--help"], runs)
    print(f"python -c 'import click'  {ref * 1000:7.1f} ms (median of {runs})")
    print(f"harborctl --help          {ours * 1000:7.1f} ms (median of {runs})")
    print(f"ratio                     {ours / ref:7.2f}  (goal < 4)")


if __name__ == "__main__":
    main()
