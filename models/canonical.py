"""The one canonical JSON: what gets hashed and signed (manifests, targets, key lists, commands).

>>> canonical_json({"b": 1, "a": [1.5, "é"]})
b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'

``NaN`` and ``Infinity`` are not JSON: they raise :class:`ValueError`, so callers that take documents
from the network must treat that as a malformed document.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, UTF-8, no NaN/Infinity)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
