"""NWRMSLE and R² against values computed by hand."""

import math

import numpy as np
import pytest

from cloud.training.metrics import nwrmsle, nwrmsle_log, r2, weights


def test_weights_are_kaggles():
    assert weights([True, False, True]).tolist() == [1.25, 1.0, 1.25]


def test_nwrmsle_hand_computed():
    # rows: (y, ŷ, perishable) = (0, 1, no), (3, 1, yes), (7, 7, no)
    # terms: ln2 - ln1 = ln 2 (w 1); ln2 - ln4 = -ln 2 (w 1.25); 0 (w 1)
    expected = math.sqrt((1.0 * math.log(2) ** 2 + 1.25 * math.log(2) ** 2 + 0.0) / (1 + 1.25 + 1))
    got = nwrmsle([0.0, 3.0, 7.0], [1.0, 1.0, 7.0], [False, True, False])
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(0.57673, abs=1e-5)


def test_perishable_weight_changes_the_score():
    y, p = [0.0, 0.0], [1.0, 0.0]
    assert nwrmsle(y, p, [True, False]) > nwrmsle(y, p, [False, True])


def test_nwrmsle_log_space_matches_units():
    y, p, per = np.array([1.0, 5.0, 0.0]), np.array([2.0, 4.0, 0.5]), np.array([0, 1, 0])
    assert nwrmsle_log(np.log1p(y), np.log1p(p), per) == pytest.approx(nwrmsle(y, p, per))


def test_perfect_prediction_is_zero():
    assert nwrmsle([1.0, 2.0], [1.0, 2.0], [0, 1]) == 0.0


@pytest.mark.parametrize("y,p", [([-1.0], [1.0]), ([1.0], [-0.5])])
def test_negative_values_are_refused(y, p):
    with pytest.raises(ValueError, match="non-negative"):
        nwrmsle(y, p, [False])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        nwrmsle([1.0, 2.0], [1.0], [False, False])


def test_r2_hand_computed():
    # mean 2; SS_tot = 1 + 0 + 1 = 2; SS_res = 0.25 + 0 + 0.25 = 0.5 → 1 - 0.25 = 0.75
    assert r2([1.0, 2.0, 3.0], [1.5, 2.0, 2.5]) == pytest.approx(0.75)
    assert r2([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == pytest.approx(0.0)
