"""Run every benchmark in one process and print ours beside the anchors'.

    .venv/bin/python benchmarks/run.py            # all of them
    .venv/bin/python benchmarks/run.py retry      # only bench_retry.py
    .venv/bin/python benchmarks/run.py targets    # issue #13's targets, each PASS/MISS

Each ``bench_*.py`` module here has a ``run()``; figures are medians (see
_harness.py) and ratios compare like with like, measured in this process.
"""

from __future__ import annotations

import importlib
import platform
import sys

from pathlib import Path


HERE = Path(__file__).parent
ORDER = ["core", "retry", "breaker", "budget", "ratelimit", "cache", "route", "trace", "fallback", "validate", "stack", "e2e", "wire"]
ONLY_BY_NAME = {"targets"}  # runs the others again: only when asked for


def main(selected: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    names = sorted(
        (p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py")),
        key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n),
    )
    print(f"python {platform.python_version()} on {platform.machine()}; medians of batches")
    for name in names:
        if (name not in selected) if selected else (name in ONLY_BY_NAME):
            continue
        print()
        importlib.import_module(f"bench_{name}").run()


if __name__ == "__main__":
    main(sys.argv[1:])
