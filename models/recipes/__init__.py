"""Model recipes: features, architecture, training settings and the parity tolerances per variant.

>>> recipe = load_recipe("favorita_demand")
>>> recipe.tolerances["tflite-int8"].max_nwrmsle_increase
0.05
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from models.strict import Strict
from models.variants import NAMES

__all__ = ["Recipe", "Tolerance", "load_recipe", "VARIANTS"]

#: Every export variant, in the order the report lists them.
VARIANTS = NAMES  # models.variants is the one table


_Strict = Strict  # the contract's one strict base (models.strict)


class Tolerance(_Strict):
    max_nwrmsle_increase: float = Field(ge=0, description="Largest allowed relative NWRMSLE increase vs Keras.")
    max_p99_abs_diff: float = Field(ge=0, description="Largest allowed p99 |variant - keras| in log1p space.")


class Architecture(_Strict):
    embedding_dims: dict[str, int] = Field(description="Embedding width per categorical feature.")
    hidden_units: list[int] = Field(min_length=1, description="Dense layer widths.")
    dropout: float = Field(ge=0, lt=1, description="Dropout after each dense layer.")
    linear_skip: bool = Field(
        default=False, description="Add a linear path from the features to the output (wide & deep)."
    )


class Training(_Strict):
    epochs: int = Field(gt=0, description="Passes over the training split.")
    batch_size: int = Field(gt=0, description="Rows per gradient step.")
    learning_rate: float = Field(gt=0, description="Adam learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="constant, or cosine decay to 5% of learning_rate over all steps."
    )
    max_rows_per_epoch: int | None = Field(
        default=2_000_000,
        gt=0,
        description="Row budget per epoch (scale cap): when the training split is larger, every epoch trains on "
        "a fresh random sample of this many rows (pairs x days), so the cosine schedule, the steps and the time "
        "are bounded; null trains on every row every epoch. Default 2,000,000 (6 stores x 60 items has ~130 K "
        "rows: not capped; 54 x 500 x 3 years has ~8.4 M and scores NWRMSLE 0.6256 at 2 M rows per epoch, "
        "0.6258 at 4 M for twice the time).",
    )


class Serving(_Strict):
    max_batch: int = Field(gt=0, description="Most rows one request may carry.")
    horizon_days: int = Field(gt=0, description="How far past the last known sales a date may be.")


class Baselines(_Strict):
    rf_n_estimators: int = Field(gt=0, description="Trees of the CD4ML random forest baseline.")
    ma_days: int = Field(gt=0, description="Days of the moving-average baseline.")
    rf_max_rows: int = Field(
        default=2_000_000,
        gt=0,
        description="Scale cap: the random forest is fitted on a random sample (pairs x days) of this many "
        "training rows when the split is larger. Default 2,000,000 (at 54 x 500 x 3 years: ~40 s on 2 cores, "
        "NWRMSLE 0.835; 500,000 rows would score 0.990, a baseline too weak to mean anything).",
    )
    lightgbm_max_rows: int = Field(
        default=1_000_000,
        gt=0,
        description="Scale cap: LightGBM chooses its rounds and is refitted on a random sample (pairs x days) "
        "of this many training rows when the split is larger. Default 1,000,000 (at 54 x 500 x 3 years: "
        "NWRMSLE 0.6297, ~70 s CPU; 3,000,000 rows: 0.6284 for 2.3x the time).",
    )
    lightgbm_max_rounds: int = Field(default=600, gt=0, description="Most boosting rounds (early stopping picks fewer).")
    lightgbm_threads: int = Field(default=2, gt=0, description="LightGBM num_threads (the target machine has 2 cores).")


class Recipe(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$", description="Model name (bundle and topic id).")
    description: str = Field(description="What the model predicts.")
    seed: int = Field(description="Seed for every random choice in training.")
    validation_days: int = Field(gt=0, description="The last N days form the validation split.")
    train_days: int = Field(gt=0, description="Days of training data before the validation split.")
    architecture: Architecture
    training: Training
    serving: Serving
    holdout_rows: int = Field(gt=0, description="Rows of the validation split shipped for the on-device gate.")
    calibration_rows: int = Field(gt=0, description="Training rows used to calibrate full int8.")
    parity_max_rows: int = Field(
        default=500_000,
        gt=0,
        description="Scale cap: the exported variants run on a random sample of this many validation rows "
        "(always including the holdout rows) for the parity gate and their metrics; the gate is a comparison "
        "with Keras on the same rows, so a large random sample suffices. Default 500,000: 54 x 500 (371,664 "
        "validation rows, under 1 s per variant) and 6 x 60 (5,760) run on all of them.",
    )
    baselines: Baselines
    tolerances: dict[str, Tolerance] = Field(description="Parity tolerance per export variant.")
    variant_preference: list[str] = Field(description="Order in which an agent prefers shipped variants.")
    lightgbm_variant: Literal["if_better", "always", "never"] = Field(
        default="if_better",
        description="Ship the LightGBM baseline as onnx-lightgbm: 'if_better' (first, when its validation "
        "NWRMSLE beats the Keras variant a device would run and it passes the store-type gate), 'always' "
        "(first when better, else last), 'never'.",
    )


def load_recipe(name_or_path: str | Path = "favorita_demand") -> Recipe:
    """Load a recipe by name (``models/recipes/<name>.json``) or from a path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = Path(__file__).with_name(f"{name_or_path}.json")
    return Recipe.model_validate(json.loads(path.read_text()))
