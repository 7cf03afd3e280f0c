"""`warn`: a warning that points at the user's line, not into llmguard.

Python 3.12's ``skip_file_prefixes`` does this; on 3.11 the stack level is
counted here, skipping every frame of this package (and of ``wrapt``, whose
wrappers may sit between the user's code and ours).
"""

from __future__ import annotations

import os
import sys
import warnings

from pathlib import Path
from typing import Final


_PACKAGE: Final = str(Path(__file__).resolve().parent) + os.sep
_SKIP: Final = (_PACKAGE,)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue *message* as *category*, attributed to the first frame outside llmguard."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, skip_file_prefixes=_SKIP)
        return
    level = 2  # the caller of this function
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)
