"""The Keras model: embeddings for stores, items and calendar, an MLP over them and the numeric features.

Seeded and deterministic (``keras.utils.set_random_seed`` + TensorFlow op determinism): the same data,
recipe and seed give the same weights. The loss is MSE in log1p space weighted 1.25 for perishable
items, i.e. the square of Kaggle's NWRMSLE.

Scale cap: with ``training.max_rows_per_epoch`` set and a larger training split, every epoch trains on
a fresh seeded random sample of that many rows (pairs x days) instead of all of them; the number of
steps, the cosine schedule and the time follow the sample's size. A smaller split trains on every row
every epoch, exactly as without the cap. ``caps`` (:class:`cloud.training.caps.Caps`) records it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from cloud.training.caps import Caps
from cloud.training.metrics import weights
from models.contract import CAT_FEATURES, NUM_FEATURES
from models.features import Encoded
from models.recipes import Recipe

__all__ = ["quiet_tensorflow", "build_model", "fit", "predict_log", "fill_unseen_embeddings"]

logger = logging.getLogger(__name__)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ banner and oneDNN notes before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def build_model(recipe: Recipe, cardinalities: dict[str, int], y_mean: float) -> Any:
    """Two inputs, ``cat`` int32 [N, 8] and ``num`` float32 [N, 22]; one output, log1p(sales)."""
    quiet_tensorflow()
    import keras

    arch = recipe.architecture
    cat_in = keras.Input(shape=(len(CAT_FEATURES),), dtype="int32", name="cat")
    num_in = keras.Input(shape=(len(NUM_FEATURES),), dtype="float32", name="num")
    parts = [num_in]
    for i, feature in enumerate(CAT_FEATURES):
        column = cat_in[:, i]
        emb = keras.layers.Embedding(cardinalities[feature], arch.embedding_dims[feature], name=f"emb_{feature}")
        parts.append(emb(column))
    x = features = keras.layers.Concatenate(name="features")(parts)
    for j, units in enumerate(arch.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{j}")(x)
        if arch.dropout:
            x = keras.layers.Dropout(arch.dropout, seed=recipe.seed + j)(x)
    out = keras.layers.Dense(1, name="log_sales", bias_initializer=keras.initializers.Constant(y_mean))(x)
    if arch.linear_skip:  # wide & deep: a linear path from every feature straight to the output
        wide = keras.layers.Dense(1, use_bias=False, name="wide")(features)
        out = keras.layers.Add(name="log_sales_sum")([out, wide])
    return keras.Model(inputs=[cat_in, num_in], outputs=out, name=recipe.name.replace("-", "_"))


def fit(
    recipe: Recipe,
    cardinalities: dict[str, int],
    x: Encoded,
    y: np.ndarray,
    perishable: np.ndarray,
    *,
    progress: bool = True,
    caps: Caps | None = None,
) -> Any:
    """Train the model on one split; returns the Keras model."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(recipe.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(recipe, cardinalities, float(np.mean(y)))
    tr = recipe.training
    n = len(y)
    per_epoch = n if tr.max_rows_per_epoch is None else min(n, tr.max_rows_per_epoch)
    (caps or Caps()).record("keras", limit=tr.max_rows_per_epoch, rows=n, used=per_epoch, per_epoch=True, epochs=tr.epochs)
    lr: Any = tr.learning_rate
    if tr.lr_schedule == "cosine":
        steps = int(np.ceil(per_epoch / tr.batch_size)) * tr.epochs
        lr = keras.optimizers.schedules.CosineDecay(tr.learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    callbacks = []
    if progress:
        from tqdm.keras import TqdmCallback

        callbacks.append(TqdmCallback(verbose=0, desc="train"))
    sample_weight = weights(perishable)
    if per_epoch == n:
        model.fit(
            {"cat": x.cat, "num": x.num},
            y.reshape(-1, 1),
            sample_weight=sample_weight,
            epochs=tr.epochs,
            batch_size=tr.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
    else:  # a fresh random sample of rows each epoch; the optimizer (and its schedule) carries on
        rng = np.random.default_rng(recipe.seed)
        for epoch in range(tr.epochs):
            idx = np.sort(rng.choice(n, per_epoch, replace=False))
            model.fit(
                {"cat": x.cat[idx], "num": x.num[idx]},
                y[idx].reshape(-1, 1),
                sample_weight=sample_weight[idx],
                initial_epoch=epoch,
                epochs=epoch + 1,
                batch_size=tr.batch_size,
                shuffle=True,
                verbose=0,
                callbacks=callbacks,
            )
    fill_unseen_embeddings(model, x.cat)
    return model


def fill_unseen_embeddings(model: Any, cat: np.ndarray, features: tuple[str, ...] = ("store", "item")) -> dict[str, int]:
    """Give the stores and items no training row used (a new item of the catalogue, a store without
    sales) the mean embedding of those that were, instead of their random initial one: a cold-start
    pair then looks like an average store or item to the model. Returns how many rows were filled.

    Index 0 ("unknown") is left alone: the agent refuses unknown stores and items."""
    filled: dict[str, int] = {}
    for feature in features:
        layer = model.get_layer(f"emb_{feature}")
        weights = np.array(layer.get_weights()[0])
        used = np.zeros(len(weights), bool)
        used[np.unique(cat[:, CAT_FEATURES.index(feature)])] = True
        unseen = ~used
        unseen[0] = False
        if unseen.any() and used[1:].any():
            weights[unseen] = weights[1:][used[1:]].mean(axis=0)
            layer.set_weights([weights])
        filled[feature] = int(unseen.sum())
    logger.info("embeddings of unseen stores/items set to the mean: %s", filled)
    return filled


def predict_log(model: Any, x: Encoded, batch_size: int = 8192) -> np.ndarray:
    """Keras predictions in log1p space, float32 [N]."""
    return np.asarray(model.predict({"cat": x.cat, "num": x.num}, batch_size=batch_size, verbose=0)).reshape(-1)
