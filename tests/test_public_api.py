"""The public surface: __all__ complete and sorted, the contract's names present."""

from __future__ import annotations

import inspect

import llmguard as lg


def test_all_is_sorted_and_every_name_exists() -> None:
    """__all__ is sorted and each name in it resolves on the package."""
    assert sorted(lg.__all__) == lg.__all__
    for name in lg.__all__:
        assert getattr(lg, name) is not None


def test_every_public_attribute_is_in_all() -> None:
    """Nothing public is exported by accident: each non-module public attribute is in __all__."""
    public = {
        name
        for name, value in vars(lg).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }

    assert set() == public - set(lg.__all__)


def test_the_error_hierarchy_of_the_contract() -> None:
    """Every llmguard error derives from LLMGuardError; GuardTimeout is a TimeoutError, AllFailed an ExceptionGroup."""
    errors = [lg.BudgetExceeded, lg.GuardTimeout, lg.RateLimited, lg.CircuitOpen, lg.AllFailed,
              lg.ValidationFailed, lg.InputRejected, lg.StreamInterrupted]

    assert all(issubclass(e, lg.LLMGuardError) for e in errors)
    assert issubclass(lg.GuardTimeout, TimeoutError)
    assert issubclass(lg.AllFailed, ExceptionGroup)


def test_version_is_read_from_the_installed_metadata() -> None:
    """lg.__version__ comes from the package metadata."""
    from importlib.metadata import version

    assert version("llmguard") == lg.__version__
