"""Every recipe runs end to end (offline, against the fake provider)."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import pytest


RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.py"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_runs_offline(recipe: Path) -> None:
    """The recipe exits 0 with no API key set, printing its results."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(  # noqa: S603 - our own file
        [sys.executable, str(recipe)], capture_output=True, text=True, timeout=120, env=env, check=False
    )

    assert 0 == done.returncode, done.stderr
    assert done.stdout.strip()
