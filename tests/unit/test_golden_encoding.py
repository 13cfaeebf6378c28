"""Trainer and agent encode the same rows identically.

The trainer builds its validation rows from the sales matrix (``cloud.training.prepare``), with lag windows
ending the day before the validation split. An agent whose bundle state ends on that same day
receives those rows as JSON requests, reads the tables and windows back from the signed bundle
and encodes them with ``Predictor.encode``. The arrays must be equal bit for bit — any train/serve
skew (a vocabulary order, a holiday rule, a date off by one, a lossy serialisation) fails here.
"""


import numpy as np
import pytest

from cloud.data import loader as favorita
from cloud.data.synth import generate
from cloud.training.prepare import prepare
from edge.serving.predictor import Predictor
from models.contract import NUM_FEATURES
from models.signing import generate_keypair
from tests.bundle_kit import build_bundle


@pytest.fixture(scope="module")
def trainer_side(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    generate(root / "data", stores=3, items=12, days=160, seed=11)
    loaded = favorita.load(root / "data", progress=False)
    rows, _ = favorita.clean(loaded.train)
    grid = favorita.daily_grid(rows, rows["date"].min(), rows["date"].max())
    prep = prepare(grid, loaded.stores, loaded.items, loaded.holidays, validation_days=14, train_days=40)
    return root, prep


def test_agent_encodes_the_trainers_validation_rows_identically(trainer_side):
    root, prep = trainer_side
    m, valid = prep.matrix, prep.valid
    cut = int(valid.day.min()) - 1  # validation windows end here
    private, public = generate_keypair()
    bundle, _ = build_bundle(
        root / "golden.bundle.tar", private, tables=prep.tables, state=m.state(cut), max_batch=4096, horizon_days=30
    )
    instances = [
        {
            "date": str(m.dates[d]),
            "store_nbr": int(m.store_nbr[p]),
            "item_nbr": int(m.item_nbr[p]),
            "onpromotion": bool(m.promo[p, d]),
        }
        for p, d in zip(valid.pair.tolist(), valid.day.tolist(), strict=True)
    ]
    assert any(r["onpromotion"] for r in instances)  # the slice exercises promotions
    with Predictor.open(bundle, trust=[public], runtime="fake") as agent:
        served = agent.encode(instances)
    assert served.cat.dtype == valid.x.cat.dtype and served.num.dtype == valid.x.num.dtype
    np.testing.assert_array_equal(served.cat, valid.x.cat)
    np.testing.assert_array_equal(served.num, valid.x.num)


def test_golden_rows_cover_the_calendar(trainer_side):
    """The validation window of the golden data includes a holiday or a payday, so those paths are compared."""
    _, prep = trainer_side
    num = prep.valid.x.num
    assert num[:, 2].max() == 1.0 or num[:, 4].max() == 1.0  # payday or national holiday present
    assert 0.0 < num[:, 11].mean() and num[:, 8].std() > 0  # real lag values, not zeros


def test_one_row_after_the_training_data(trainer_side):
    """The bundle the trainer ships (state as of the last day): the day after it, encoded both ways."""
    root, prep = trainer_side
    m = prep.matrix
    private, public = generate_keypair()
    bundle, _ = build_bundle(root / "last.bundle.tar", private, tables=prep.tables, state=m.state())
    from models.features import encode

    day = m.dates[-1] + 1
    expected = encode(
        prep.tables,
        dates=np.array([day]),
        store_nbr=m.store_nbr[:1],
        item_nbr=m.item_nbr[:1],
        onpromotion=np.array([True]),
        windows=m.log_sales[:1, -56:],
        window_end=m.dates[-1],
    )
    with Predictor.open(bundle, trust=[public], runtime="fake") as agent:
        got = agent.encode([{"date": str(day), "store_nbr": int(m.store_nbr[0]), "item_nbr": int(m.item_nbr[0]), "onpromotion": True}])
    np.testing.assert_array_equal(got.cat, expected.cat)
    np.testing.assert_array_equal(got.num, expected.num)
    # a golden vector of zeros would pass for any encoder: this row has sales history, so its lag features are not 0
    # (lag_days_since_sale is 0 when the pair sold on the window's last day, as this one did)
    lags = [i for i, name in enumerate(NUM_FEATURES) if name.startswith("lag_") and name != "lag_days_since_sale"]
    assert np.all(expected.num[0, lags] != 0), dict(zip(NUM_FEATURES, expected.num[0], strict=True))
