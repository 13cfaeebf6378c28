"""The bundle manifest: what a model version is, where it came from, and the hash of every member.

The manifest is the signed part of a bundle: ``signature.json`` holds an Ed25519 signature over the
exact bytes of ``manifest.json``, and the manifest holds the sha256 and size of every other member.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from models.canonical import canonical_json
from models.strict import Strict

from models.contract import CAT_FEATURES, CONTRACT_VERSION, LAG_WINDOW_DAYS, NUM_FEATURES
from models.messages import Identifier, Sha256Hex
from models.variants import NAME_PATTERN

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "FileEntry",
    "Lineage",
    "ContractInfo",
    "Variant",
    "Manifest",
    "canonical_json",
]

MANIFEST_SCHEMA_VERSION = 1




_Strict = Strict  # the contract's one strict base (models.strict)


class FileEntry(_Strict):
    sha256: Sha256Hex
    size: int = Field(ge=0)


class Lineage(_Strict):
    dataset_version: Sha256Hex = Field(description="Content hash of the training data selection.")
    dataset_source: dict[str, Any] = Field(default_factory=dict, description="Where the data came from.")
    train_window: tuple[str, str] = Field(description="First and last day of the training split.")
    validation_window: tuple[str, str] = Field(description="First and last day of the validation split.")
    rows: dict[str, int] = Field(default_factory=dict, description="Row counts per split.")
    code_revision: str = Field(description="git revision of the code that trained it ('unknown' outside git).")


class ContractInfo(_Strict):
    version: int
    cat_features: list[str]
    num_features: list[str]
    lag_window_days: int
    state_end_date: str = Field(description="Last day of sales history in the bundle's state.")
    max_batch: int = Field(gt=0, description="Most rows one request may carry.")
    horizon_days: int = Field(gt=0, description="How far past state_end_date the model may be asked.")

    @classmethod
    def current(cls, *, state_end_date: str, max_batch: int, horizon_days: int) -> ContractInfo:
        """The contract this code speaks (:mod:`models.contract`), with a bundle's serving limits."""
        return cls(
            version=CONTRACT_VERSION,
            cat_features=list(CAT_FEATURES),
            num_features=list(NUM_FEATURES),
            lag_window_days=LAG_WINDOW_DAYS,
            state_end_date=state_end_date,
            max_batch=max_batch,
            horizon_days=horizon_days,
        )


class Variant(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="A variant of models.variants (its one table).")
    runtime: Literal["litert", "onnxruntime"]
    file: str
    precision: str
    size_bytes: int = Field(gt=0)
    metrics: dict[str, float] = Field(description="nwrmsle, r2 and parity figures on the validation set.")


class Manifest(_Strict):
    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: Identifier
    version: int = Field(ge=1, description="Monotonically increasing per model name.")
    created_at: dt.datetime
    lineage: Lineage
    parameters: dict[str, Any] = Field(description="Recipe and training parameters.")
    metrics: dict[str, dict[str, float]] = Field(description="Every model, baseline and variant's metrics.")
    variants: list[Variant] = Field(min_length=1, description="Shipped variants, preferred first.")
    contract: ContractInfo
    tables: str = Field(default="tables.json", description="Member with the lookup tables.")
    state: str = Field(default="state.npz", description="Member with the lag windows per store×item.")
    holdout: str = Field(default="holdout.npz", description="Member with the on-device gate's slice.")
    reference_stats: str = Field(default="reference_stats.json", description="Input statistics for drift.")
    fallback: str | None = Field(
        default=None,
        description="Member with the cold-start windows (models.coldstart); None: pairs without history are refused.",
    )
    files: dict[str, FileEntry] = Field(description="Every member but manifest.json and signature.json.")

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"bundle {self.name} v{self.version} has no variant {name!r}")
