"""Run every benchmark in one process and print ours beside the anchors'.

    .venv/bin/python benchmarks/run.py

Figures are medians (see _harness.py); ratios compare like with like,
measured in this same process.
"""

from __future__ import annotations

import platform
import sys

from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))

import bench_core


def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()}; medians of batches\n")
    bench_core.run()


if __name__ == "__main__":
    main()
