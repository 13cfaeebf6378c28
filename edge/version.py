"""The software version the agent reports (``/healthz``), read from the one place it is written:
``edgeship/__init__.py``'s ``__version__`` (also the wheel's version and ``edgeship --version``).

edge never imports edgeship, so the file is read, not imported; an installed wheel's metadata
(generated from the same line) answers when the source is not beside this package.

>>> import re; bool(re.match(r"^\\d+\\.\\d+", software_version()))
True
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from pathlib import Path

__all__ = ["software_version"]

_VERSION_LINE = re.compile(r'^__version__\s*=\s*["\']([^"\']+)["\']', re.M)


@functools.cache
def software_version() -> str:
    """``"0.1.0"``-style version of the running code; ``"unknown"`` if neither source nor metadata says."""
    source = Path(__file__).resolve().parent.parent / "edgeship" / "__init__.py"
    try:
        m = _VERSION_LINE.search(source.read_text(encoding="utf-8"))
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        return importlib.metadata.version("edgeship")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
