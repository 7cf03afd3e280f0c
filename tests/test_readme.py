"""The README's and docs/' examples run and print what they say they print."""

from __future__ import annotations

import contextlib
import io
import re

from pathlib import Path

import pytest


ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# `print(...)  # X` promises X: what follows the `#`, up to two spaces (a remark) or the end.
PROMISE = re.compile(r"^[ \t]*print\(.*\)[ \t]+#[ \t]*(.*?)(?:[ \t]{2,}.*)?$", flags=re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of *page*, in order."""
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


def promises(block: str) -> list[str]:
    """What the ``print(...)  # X`` lines of *block* promise, one line of output each."""
    return [m.strip() for m in PROMISE.findall(block)]


def test_the_readme_and_the_guide_have_examples() -> None:
    """The README and the pages on the design and on writing a guard show runnable code."""
    for page in (README, ROOT / "docs" / "architecture.md", ROOT / "docs" / "writing-a-guard.md"):
        assert python_blocks(page), f"{page.name} has no python example"


@pytest.mark.parametrize(
    "page", [p for p in (README, *DOCS) if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_example_runs_and_prints_the_promised_output(page: Path) -> None:
    """Each python block of the page runs, in order, in one namespace; a `print(...)  # X` line prints the line X."""
    blocks = python_blocks(page)
    namespace = {"__name__": page.stem.replace("-", "_")}
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs
        promised = promises(block)
        assert promised == out.getvalue().splitlines()[: len(promised)]


def test_the_promise_is_the_whole_line_up_to_a_remark() -> None:
    """A promise is what follows `#`, spaces included, up to a remark after two spaces."""
    block = "print(a)  # Hello!  (from the cache)\n    print(b)  # [1.0, 1.0]\n    print(c)  # 3\nx = 1  # not a print\n"
    assert ["Hello!", "[1.0, 1.0]", "3"] == promises(block)


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    """The README links each page of docs/, so none is found only by browsing the tree."""
    readme = README.read_text()
    assert DOCS
    assert [] == [page.name for page in DOCS if f"(docs/{page.name})" not in readme]
