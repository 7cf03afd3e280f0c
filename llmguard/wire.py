"""The wire's off switch: llmguard observes the SDKs' HTTP exchange (see ``docs/wire.md``).

``import llmguard`` patches the HTTP client libraries the SDKs use (``httpx2``,
``httpx``) once. ``LLMGUARD_WIRE=0`` in the environment before that import
leaves them alone; `uninstall()` restores them later and `install()` patches
them again. All three are idempotent.
"""

from ._wire import install, installed, uninstall


__all__ = ["install", "installed", "uninstall"]
