"""Sections of ``python -m llmguard demo``, one module per guard.

Each module has ``ORDER`` (an int), ``TITLE`` (a line) and ``run(fake)``,
which drives real SDK clients against the running `FakeProvider`. The demo
runs every section it finds here, in ``ORDER``.
"""
