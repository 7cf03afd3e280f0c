"""The README's example runs and prints what it says it prints."""

from __future__ import annotations

import contextlib
import io
import re

from pathlib import Path


README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_example_runs_and_prints_the_promised_output() -> None:
    """Each python block in README.md runs; a `print(...)  # X` line prints X."""
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
        promised = [m.strip() for m in re.findall(r"print\(.*\)\s+#\s*(\S+)", block)]
        assert promised == out.getvalue().split()[: len(promised)]
