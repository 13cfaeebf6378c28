"""Issue 14 scale caps: each recipe cap applies when the data is larger than it, leaves smaller data
alone, and is recorded (cloud.training.caps; the pipeline writes the records to report.json)."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data import loader as favorita
from cloud.data.synth import generate
from cloud.training import baselines
from cloud.training.caps import Caps
from cloud.training.prepare import Prepared, prepare
from models.recipes import load_recipe


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    root = tmp_path_factory.mktemp("caps")
    generate(root / "data", stores=2, items=8, days=130, seed=5)
    loaded = favorita.load(root / "data", progress=False)
    rows, _ = favorita.clean(loaded.train)
    grid = favorita.daily_grid(rows, rows["date"].min(), rows["date"].max())
    return prepare(grid, loaded.stores, loaded.items, loaded.holidays, validation_days=14, train_days=40)


def test_sample_is_seeded_bounded_keeps_rows_and_records():
    caps = Caps()
    keep = np.array([3, 97, 50])
    a = caps.sample("parity", 100, limit=10, seed=7, keep=keep)
    b = Caps().sample("parity", 100, limit=10, seed=7, keep=keep)
    assert len(a) == 10 and len(np.unique(a)) == 10 and np.isin(keep, a).all() and np.array_equal(a, b)
    assert np.all(np.diff(a) > 0)
    assert caps.as_dict()["parity"] == {"limit": 10, "rows": 100, "used": 10, "applied": True}
    assert caps.sample("rf", 10, limit=10, seed=7) is None  # not larger than the cap: every row
    assert caps.sample("keras", 10, limit=None, seed=7) is None
    assert caps.as_dict()["rf"]["applied"] is False and caps.as_dict()["keras"]["limit"] is None


def test_recipe_caps_have_documented_defaults():
    r = load_recipe()
    fields = {
        "baselines.rf_max_rows": (type(r.baselines), "rf_max_rows"),
        "baselines.lightgbm_max_rows": (type(r.baselines), "lightgbm_max_rows"),
        "training.max_rows_per_epoch": (type(r.training), "max_rows_per_epoch"),
        "parity_max_rows": (type(r), "parity_max_rows"),
    }
    for dotted, (model, name) in fields.items():
        info = model.model_fields[name]
        assert info.default is not None and "cap" in info.description and f"{info.default:,}" in info.description, dotted


def test_random_forest_fits_on_at_most_rf_max_rows(prep: Prepared, monkeypatch: pytest.MonkeyPatch):
    from sklearn.ensemble import RandomForestRegressor

    seen: list[int] = []
    real = RandomForestRegressor.fit
    monkeypatch.setattr(
        RandomForestRegressor, "fit", lambda self, x, y, *a, **k: (seen.append(len(x)), real(self, x, y, *a, **k))[1]
    )
    caps = Caps()
    pred = baselines.random_forest(prep, n_estimators=2, seed=1, max_rows=100, caps=caps)
    assert seen == [100] and len(pred) == len(prep.valid)
    assert caps.as_dict()["baseline-rf"] == {"limit": 100, "rows": len(prep.train), "used": 100, "applied": True}
    baselines.random_forest(prep, n_estimators=2, seed=1, max_rows=10**9, caps=caps)
    assert seen[-1] == len(prep.train) and caps.as_dict()["baseline-rf"]["applied"] is False


def test_lightgbm_chooses_rounds_and_refits_on_at_most_lightgbm_max_rows(prep: Prepared, monkeypatch: pytest.MonkeyPatch):
    import lightgbm as lgb

    seen: list[int] = []
    real = lgb.train

    def spy(params, train_set, *a, **k):
        seen.append(len(train_set.data) + sum(len(v.data) for v in k.get("valid_sets") or []))
        return real(params, train_set, *a, **k)

    monkeypatch.setattr(lgb, "train", spy)
    caps = Caps()
    pred, info, _ = baselines.lightgbm(prep, seed=1, max_rounds=5, max_rows=200, caps=caps)
    assert seen == [200, 200] and len(pred) == len(prep.valid) and 1 <= info["rounds"] <= 5  # the probe and the refit
    assert caps.as_dict()["baseline-lightgbm"] == {"limit": 200, "rows": len(prep.train), "used": 200, "applied": True}


def test_keras_trains_each_epoch_on_at_most_max_rows_per_epoch(prep: Prepared):
    from cloud.training.train import fit

    base = load_recipe()
    recipe = base.model_copy(
        update={"training": base.training.model_copy(update={"epochs": 2, "batch_size": 32, "max_rows_per_epoch": 64})}
    )
    caps = Caps()
    model = fit(recipe, prep.tables.cardinalities(), prep.train.x, prep.train.y, prep.train.perishable, progress=False, caps=caps)
    assert int(model.optimizer.iterations.numpy()) == 2 * 2  # 64 rows / 32 per step, 2 epochs (uncapped: far more)
    assert caps.as_dict()["keras"] == {
        "limit": 64, "rows": len(prep.train), "used": 64, "applied": True, "per_epoch": True, "epochs": 2,
    }  # fmt: skip
