"""The one strict base for every pydantic model in the contract: unknown fields are an error.

>>> class Point(Strict):
...     x: int
>>> Point(x=1, y=2)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for Point
...
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    """``extra="forbid"``; field names may start with ``model_`` (``model_sha256`` …)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
