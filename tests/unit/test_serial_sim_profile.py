"""The simulator's demand follows the synthetic data's public calendar effects (DEMAND_PATTERNS), which the
CLI passes in (firmware_bridge never imports cloud)."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from cloud.data import synth
from edgeship.commands.bridge import synthetic_profile
from firmware_bridge.sim import DemandProfile, DeviceSim


class NoTransport:
    def write(self, data: bytes) -> None:
        pass

    def read(self, timeout: float) -> bytes:
        return b""

    def close(self) -> None:
        pass


def test_cli_profile_is_the_synthetic_datas_demand_patterns():
    profile = synthetic_profile()
    p = synth.DEMAND_PATTERNS
    assert (profile.weekday, profile.month, profile.payday_lift, profile.payday_after) == (
        p.weekday, p.month, p.payday_lift, p.payday_after)  # fmt: skip
    days = [dt.date(2016, 1, 1) + dt.timedelta(days=k) for k in range(366)]
    assert [profile.factor(d) for d in days] == [p.factor(d) for d in days]
    assert len(p.weekday) == 7 and len(p.month) == 12 and p.payday_lift > p.payday_after > 1.0


def test_generator_uses_the_public_patterns():
    """synth.generate's day effects are DEMAND_PATTERNS (not a private copy that could drift)."""
    assert list(synth._DOW) == list(synth.DEMAND_PATTERNS.weekday)
    assert list(synth._MONTH) == list(synth.DEMAND_PATTERNS.month)
    assert (synth._PAYDAY_LIFT, synth._PAYDAY_AFTER) == (synth.DEMAND_PATTERNS.payday_lift, synth.DEMAND_PATTERNS.payday_after)


@pytest.mark.parametrize(("busy", "quiet"), [(dt.date(2017, 8, 13), dt.date(2017, 8, 8)),  # Sunday vs Tuesday
                                             (dt.date(2016, 12, 31), dt.date(2016, 11, 29))])  # December payday vs Nov
def test_sale_rate_follows_the_day(busy, quiet):
    profile = synthetic_profile()
    sim = DeviceSim(NoTransport(), items=[1, 2], rate=10.0, profile=profile, seed=1)
    n = 4000
    mean_busy = statistics.fmean(sim.next_interval(busy) for _ in range(n))
    mean_quiet = statistics.fmean(sim.next_interval(quiet) for _ in range(n))
    expected = profile.factor(quiet) / profile.factor(busy)
    assert mean_busy / mean_quiet == pytest.approx(expected, rel=0.08)
    flat = DeviceSim(NoTransport(), items=[1], rate=10.0, profile=DemandProfile(), seed=1)
    assert statistics.fmean(flat.next_interval(busy) for _ in range(n)) == pytest.approx(0.1, rel=0.05)
