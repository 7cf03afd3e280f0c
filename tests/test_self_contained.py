"""Nothing in the project points outside it: its design is in docs/, not in a file next door.

The repository is all a reader (or ``help(llmguard)``) gets. A pointer to a
design document, style guide or research note that lives beside the
checkout is a pointer to nothing for everyone else; docs/architecture.md is
where the design is written down.
"""

from __future__ import annotations

import pydoc

from pathlib import Path

import llmguard


ROOT = Path(__file__).resolve().parent.parent
# Directories that are not the project: git's own, virtual environments and
# what tools write (the .gitignore list).
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "dist", "build"})
# Spelled in pieces so that this file does not match itself.
OUTSIDE = tuple(
    "".join(parts)
    for parts in (
        ("DESIGN", ".md"),
        ("..", "/shared"),
        ("/work", "/shared"),
        ("STYLE", ".md"),
        ("research", "/"),
        ("llm_anchors", ".md"),
        ("resilience_anchors", ".md"),
        ("sdk_facts", ".md"),
        ("peers_2026", ".md"),
    )
)


def project_files() -> list[Path]:
    """Every file of the checkout, outside .git, virtual environments and tool caches."""
    out: list[Path] = []
    todo = [ROOT]
    while todo:
        for entry in todo.pop().iterdir():
            name = entry.name
            if entry.is_dir():
                if name not in SKIPPED_DIRS and not name.startswith(".venv") and not name.endswith(".egg-info"):
                    todo.append(entry)
            elif entry.is_file():
                out.append(entry)
    return out


def test_no_file_in_the_repository_points_outside_it() -> None:
    """No file names the design document, style guide or research notes kept outside the repository."""
    files = project_files()
    assert ROOT / "README.md" in files
    assert ROOT / "llmguard" / "__init__.py" in files
    found = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            found.extend(f"{path.relative_to(ROOT)}:{lineno}: {needle}" for needle in OUTSIDE if needle in line)
    assert [] == found


def test_help_of_the_package_points_only_inside_it() -> None:
    """``help(llmguard)`` names no document outside the repository."""
    text = pydoc.render_doc(llmguard, renderer=pydoc.plaintext)
    assert "llmguard" in text
    assert [] == [needle for needle in OUTSIDE if needle in text]
