"""Every ``edgeship`` sub-command: one module per group, each with ``register(sub)``.

A module adds its parsers to the root's sub-parsers and binds the handler with
``set_defaults(func=...)``; the handler takes the parsed arguments and returns the exit code.
Heavy imports (TensorFlow, pandas, runtimes) happen inside handlers, so ``edgeship agent`` starts on
a device that has only the ``edge`` extra installed. Shared argument types live in
:mod:`edgeship.commands.args`.
"""

from __future__ import annotations

import argparse
from typing import Protocol

__all__ = ["MODULES", "Command"]

# Order here is the order of ``edgeship --help``.
MODULES = [
    "edgeship.commands.data",
    "edgeship.commands.train",
    "edgeship.commands.runs",
    "edgeship.commands.stage",
    "edgeship.commands.retrain",
    "edgeship.commands.keys",
    "edgeship.commands.delivery",
    "edgeship.commands.fleet",
    "edgeship.commands.provision",
    "edgeship.commands.agent",
    "edgeship.commands.bridge",
    "edgeship.commands.demo",
    "edgeship.commands.validate",
    "edgeship.commands.feedback",
    "edgeship.commands.cycle",
]


class Command(Protocol):
    def register(self, sub: argparse._SubParsersAction) -> None: ...  # pragma: no cover
