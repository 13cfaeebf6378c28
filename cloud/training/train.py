"""The Keras model: embeddings for stores, items and calendar, an MLP over them and the numeric features.

Seeded and deterministic (``keras.utils.set_random_seed`` + TensorFlow op determinism): the same data,
recipe and seed give the same weights. The loss is MSE in log1p space weighted 1.25 for perishable
items, i.e. the square of Kaggle's NWRMSLE.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

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
) -> Any:
    """Train the model on one split; returns the Keras model."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(recipe.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(recipe, cardinalities, float(np.mean(y)))
    tr = recipe.training
    lr: Any = tr.learning_rate
    if tr.lr_schedule == "cosine":
        steps = int(np.ceil(len(y) / tr.batch_size)) * tr.epochs
        lr = keras.optimizers.schedules.CosineDecay(tr.learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    callbacks = []
    if progress:
        from tqdm.keras import TqdmCallback

        callbacks.append(TqdmCallback(verbose=0, desc="train"))
    model.fit(
        {"cat": x.cat, "num": x.num},
        y.reshape(-1, 1),
        sample_weight=weights(perishable),
        epochs=recipe.training.epochs,
        batch_size=recipe.training.batch_size,
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
