"""``python -m llmguard demo``: real SDK calls against the fake provider.

Runs offline: it starts `llmguard.testing.FakeProvider` on 127.0.0.1, points
the real ``anthropic`` and ``openai`` clients at it, and runs each section
in ``llmguard._demo`` (one per guard).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from types import ModuleType


def _sections() -> list[ModuleType]:
    from . import _demo  # noqa: PLC0415

    modules = [
        importlib.import_module(f"{_demo.__name__}.{info.name}")
        for info in pkgutil.iter_modules(_demo.__path__)
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 99), m.__name__))


def demo() -> int:
    """Run the demo; returns the process exit code."""
    try:
        import anthropic  # noqa: F401, PLC0415
        import openai  # noqa: F401, PLC0415
    except ImportError:
        print("the demo needs the SDKs: pip install 'llmguard[demo]'", file=sys.stderr)
        return 2
    from .testing import FakeProvider  # noqa: PLC0415

    with FakeProvider() as fake:
        print(f"llmguard demo: the real anthropic and openai SDKs against a fake provider at {fake.url}")
        for number, section in enumerate(_sections(), 1):
            print(f"\n{number}. {section.TITLE}")
            fake.reset()
            section.run(fake)
    print("\ndone.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the ``python -m llmguard`` command line and run it."""
    parser = argparse.ArgumentParser(prog="python -m llmguard")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run real SDK calls through llmguard against a local fake provider")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
