"""Issue 14 evaluation pieces: promotion imputation (the leak), slices, the store-type gate, mean14."""

from __future__ import annotations

import numpy as np

from cloud.training.prepare import impute_promo
from cloud.training.slices import group_nwrmsle, store_type_gate
from models.features import encode
from tests.bundle_kit import sample_tables


def test_days_without_sales_take_the_item_campaign_flag_not_false():
    # item 7 at 4 stores; day 0: two stores sold on promotion, one sold without, one sold nothing
    promo = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], np.float32)
    sold = np.array([[1, 1], [1, 0], [1, 0], [0, 0]], bool)
    out = impute_promo(promo, sold, np.array([7, 7, 7, 7]))
    assert out[3, 0] == 1.0  # imputed from the campaign (2 of 3 sellers on promotion)
    assert out[2, 0] == 0.0  # its own flag stays
    assert out[3, 1] == 0.0 and out[1, 1] == 0.0  # nobody on promotion that day
    unknown = impute_promo(promo, sold, np.array([7, 7, 7, 7]), np.array([1]))
    assert np.all(unknown[:, 1] == 0.5)  # empty flags: a third state, not False


def test_unknown_promotion_encodes_as_a_third_state():
    t = sample_tables()
    enc = encode(
        t, dates=np.array(["2017-08-16"] * 3, "M8[D]"), store_nbr=np.array([1, 1, 1]), item_nbr=np.array([103520] * 3),
        onpromotion=np.array([0.0, 1.0, 0.5]), windows=np.zeros((3, 56), np.float32), window_end=np.datetime64("2017-08-15"),
    )  # fmt: skip
    assert enc.num[:, 0].tolist() == [0.0, 1.0, 0.5]
    booleans = encode(
        t, dates=np.array(["2017-08-16"] * 2, "M8[D]"), store_nbr=np.array([1, 1]), item_nbr=np.array([103520] * 2),
        onpromotion=np.array([False, True]), windows=np.zeros((2, 56), np.float32), window_end=np.datetime64("2017-08-15"),
    )  # fmt: skip
    assert booleans.num[:, 0].tolist() == [0.0, 1.0]


def test_store_type_gate_fails_when_a_type_is_much_worse():
    y = np.zeros(6)
    pred = np.array([0.1, 0.1, 0.1, 0.1, 1.0, 1.0])
    per = np.zeros(6, bool)
    by_type = group_nwrmsle(y, pred, per, np.array(["A", "A", "A", "A", "E", "E"]))
    overall = float(np.sqrt(np.mean(pred**2)))
    v = store_type_gate(overall, by_type)
    assert not v.passed and "type E" in v.message
    assert store_type_gate(overall, {"A": overall, "B": 1.4 * overall}).passed
