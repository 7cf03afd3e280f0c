"""Two or more `bench_targets` outputs side by side: each target's figure and verdict per run.

    .venv/bin/python benchmarks/compare_targets.py before.txt after.txt [...]

Reads the TARGETS table each run printed (the text `run.py targets`
writes) and prints one line per target: per run, the ratio to its anchor
where the target is a ratio, else the measured figure (with, in brackets,
that figure over the run's load factor: "~unloaded"), and the verdict;
with each run's load average. Lines missing from a run show as "-".
"""

from __future__ import annotations

import re
import sys

from pathlib import Path


LINE = re.compile(
    r"^  (?P<what>\S.*?)\s+(?P<measured>-?[\d.]+ µs|—)\s+(?:(?P<quiet>-?[\d.]+ µs)  )?(?P<anchor>.*?)\s*(?P<ratio>-?[\d.]+x)?"
    r"\s+(?P<target><=.*?)?\s+(?P<verdict>PASS|MISS|ERROR|info)$"
)


def parse(path: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """(load average line, {what: (figure, verdict)}) from one run's output."""
    rows: dict[str, tuple[str, str]] = {}
    load = ""
    inside = False
    found = re.search(r"absolute µs figures here are ~([\d.]+)x", path.read_text())
    scale = float(found[1]) if found else None
    for text in path.read_text().splitlines():
        if text.startswith("TARGETS"):
            inside = True
            continue
        if not inside:
            continue
        if text.startswith("  load average:"):
            load = text.strip()
        m = LINE.match(text)
        if m:
            target = m["target"] or ""
            quiet = m["quiet"]
            if quiet is None and scale and m["measured"] != "—" and " e2e " not in m["what"]:
                quiet = f"{float(m['measured'].split()[0]) / scale:.2f} µs"
            measured = m["measured"] + (f" (~{quiet})" if quiet else "")
            figure = m["ratio"] if m["ratio"] and target.rstrip().endswith("x") else measured
            if "%" in target:
                figure = target[target.index("(") + 1 : target.index(")")]
            elif "anchor+" in target:
                figure = measured + " " + target[target.index("(") :]
            rows[m["what"].strip()] = (figure, m["verdict"])
    return load, rows


def main(paths: list[str]) -> None:
    runs = [(Path(p).name, *parse(Path(p))) for p in paths]
    for name, load, _ in runs:
        print(f"{name}: {load}")
    whats: list[str] = []
    for _, _, rows in runs:
        whats += [w for w in rows if w not in whats]
    width = 34
    print(f"{'target':<64}" + "".join(f"{name[:width]:<{width}}" for name, _, _ in runs))
    for what in whats:
        cells = []
        for _, _, rows in runs:
            figure, verdict = rows.get(what, ("-", ""))
            cells.append(f"{figure} {verdict if verdict != 'info' else ''}".strip())
        print(f"{what[:63]:<64}" + "".join(f"{c:<{width}}" for c in cells))


if __name__ == "__main__":
    main(sys.argv[1:])
