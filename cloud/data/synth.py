"""Synthetic Corporación Favorita data, in exactly the format of the Kaggle files.

:func:`generate` writes ``train.csv``, ``test.csv``, ``items.csv``, ``stores.csv``,
``holidays_events.csv``, ``transactions.csv`` and ``oil.csv`` with the real columns and the real
conventions (only non-zero sales rows in ``train.csv``, returns as negative ``unit_sales``,
``onpromotion`` empty before 2014-04-01, ``test.csv`` = every store x item for the 16 days after
the last training day, ids of ``test.csv`` continuing those of ``train.csv``, oil on weekdays only
with gaps, holidays extending ~140 days past the end so future dates have them)::

    >>> from cloud.data import synth
    >>> summary = synth.generate("data/synth", stores=5, items=50, days=540, seed=0)  # doctest: +SKIP
    >>> print(summary.describe())                                                      # doctest: +SKIP

The demand has structure a model can learn: per store x item base demand (log-normal, some slow
movers with many zero days), store type/cluster effects, item family/class effects, weekly
seasonality with weekend peaks, paydays (the 15th and the last day of the month), promotions,
national/regional/local holidays with transfers, bridges and work days, the 2016-04-16 Manabí
earthquake (a two-week spike for some families), December, a slow trend per store, closed stores
on Christmas day (and most on New Year's day), and negative-binomial noise. Perishable families
sold by weight have fractional ``unit_sales``.

Output is deterministic: the same arguments give byte-identical files. Files are written
atomically (temporary file, fsync, rename). Run it as ``python -m cloud.data.synth OUT_DIR``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

__all__ = [
    "SynthSummary",
    "generate",
    "DemandPatterns",
    "DEMAND_PATTERNS",
    "FILES",
    "CITIES",
    "FAMILIES",
    "PERISHABLE_FAMILIES",
    "PROMO_KNOWN_FROM",
    "EARTHQUAKE",
    "TEST_DAYS",
    "HOLIDAY_HORIZON_DAYS",
    "DIFFICULTIES",
    "ORACLE_FILE",
    "ORACLE_TRAIN_DAYS",
    "holiday_table",
    "easter",
]

logger = logging.getLogger(__name__)

FILES = (
    "train.csv",
    "test.csv",
    "items.csv",
    "stores.csv",
    "holidays_events.csv",
    "transactions.csv",
    "oil.csv",
)
#: ``onpromotion`` is empty in ``train.csv`` before this date (as in the real file).
PROMO_KNOWN_FROM = dt.date(2014, 4, 1)
#: The Manabí earthquake.
EARTHQUAKE = dt.date(2016, 4, 16)
TEST_DAYS = 16
HOLIDAY_HORIZON_DAYS = 140
#: Profiles: ``easy`` (stationary pair levels, independent store shocks — quick demos and tests) and
#: ``hard`` (what separates models: see :func:`_harden`).
DIFFICULTIES = ("easy", "hard")
#: ``oracle.csv`` covers the last ORACLE_TRAIN_DAYS days of train.csv and every test.csv day.
ORACLE_TRAIN_DAYS = 32
ORACLE_FILE = "oracle.csv"
_ORACLE_DRAWS = 96
_STOCKOUT_START = 0.004  # hard: chance a pair runs out on a given day
_STOCKOUT_RUN_MEAN = 4.0

#: Real (city, state) pairs of Ecuador with Favorita stores; the first stores take them in order.
CITIES: tuple[tuple[str, str], ...] = (
    ("Quito", "Pichincha"),
    ("Guayaquil", "Guayas"),
    ("Cuenca", "Azuay"),
    ("Santo Domingo", "Santo Domingo de los Tsachilas"),
    ("Manta", "Manabi"),
    ("Ambato", "Tungurahua"),
    ("Machala", "El Oro"),
    ("Latacunga", "Cotopaxi"),
    ("Riobamba", "Chimborazo"),
    ("Loja", "Loja"),
    ("Ibarra", "Imbabura"),
    ("Babahoyo", "Los Rios"),
    ("Quevedo", "Los Rios"),
    ("Esmeraldas", "Esmeraldas"),
    ("Libertad", "Guayas"),
    ("Salinas", "Santa Elena"),
    ("Daule", "Guayas"),
    ("Playas", "Guayas"),
    ("El Carmen", "Manabi"),
    ("Cayambe", "Pichincha"),
    ("Puyo", "Pastaza"),
    ("Guaranda", "Bolivar"),
)

# Local holidays: city -> [(description, month, day)]; "-1" Additional days as the real file has.
_LOCAL_HOLIDAYS: dict[str, list[tuple[str, int, int]]] = {
    "Quito": [("Fundacion de Quito", 12, 6)],
    "Guayaquil": [("Fundacion de Guayaquil", 7, 25)],
    "Cuenca": [("Fundacion de Cuenca", 4, 12)],
    "Santo Domingo": [("Fundacion de Santo Domingo", 7, 3)],
    "Manta": [("Fundacion de Manta", 11, 4)],
    "Ambato": [("Fundacion de Ambato", 4, 21), ("Independencia de Ambato", 11, 12)],
    "Machala": [("Fundacion de Machala", 6, 25)],
    "Latacunga": [("Independencia de Latacunga", 11, 11)],
    "Riobamba": [("Fundacion de Riobamba", 8, 15)],
    "Loja": [("Fundacion de Loja", 12, 8)],
    "Ibarra": [("Fundacion de Ibarra", 9, 28)],
    "Babahoyo": [("Cantonizacion de Babahoyo", 5, 27)],
    "Quevedo": [("Cantonizacion de Quevedo", 10, 7)],
    "Esmeraldas": [("Fundacion de Esmeraldas", 8, 21)],
    "Libertad": [("Cantonizacion de Libertad", 4, 14)],
    "Salinas": [("Cantonizacion de Salinas", 12, 22)],
    "Daule": [("Cantonizacion de Daule", 3, 11)],
    "Playas": [("Cantonizacion de Playas", 11, 7)],
    "El Carmen": [("Cantonizacion de El Carmen", 6, 3)],
    "Cayambe": [("Cantonizacion de Cayambe", 7, 23)],
    "Puyo": [("Cantonizacion del Puyo", 10, 12)],
    "Guaranda": [("Independencia de Guaranda", 11, 10)],
}
_LOCAL_ADDITIONAL = {"Fundacion de Quito", "Fundacion de Guayaquil"}  # have a "-1" Additional day
_LOCAL_TRANSFERABLE = {"Fundacion de Guayaquil", "Fundacion de Cuenca"}

_REGIONAL_HOLIDAYS: dict[str, list[tuple[str, int, int]]] = {
    "Cotopaxi": [("Provincializacion de Cotopaxi", 4, 25)],
    "Imbabura": [("Provincializacion de Imbabura", 6, 25)],
    "Santo Domingo de los Tsachilas": [("Provincializacion de Santo Domingo", 11, 6)],
    "Santa Elena": [("Provincializacion Santa Elena", 11, 7)],
}

_NATIONAL_FIXED: tuple[tuple[str, int, int, bool], ...] = (
    # (description, month, day, transferable)
    ("Primer dia del ano", 1, 1, False),
    ("Dia del Trabajo", 5, 1, False),
    ("Batalla de Pichincha", 5, 24, True),
    ("Primer Grito de Independencia", 8, 10, True),
    ("Independencia de Guayaquil", 10, 9, True),
    ("Dia de Difuntos", 11, 2, False),
    ("Independencia de Cuenca", 11, 3, False),
    ("Navidad", 12, 25, False),
)
_BRIDGEABLE = {"Primer dia del ano", "Dia de Difuntos", "Navidad"}

_MUNDIAL_2014: tuple[tuple[str, dt.date], ...] = (
    ("Inauguracion Mundial de futbol Brasil", dt.date(2014, 6, 12)),
    ("Mundial de futbol Brasil: Ecuador-Suiza", dt.date(2014, 6, 15)),
    ("Mundial de futbol Brasil: Ecuador-Honduras", dt.date(2014, 6, 20)),
    ("Mundial de futbol Brasil: Ecuador-Francia", dt.date(2014, 6, 25)),
    ("Mundial de futbol Brasil: Octavos de Final", dt.date(2014, 6, 28)),
    ("Mundial de futbol Brasil: Cuartos de Final", dt.date(2014, 7, 4)),
    ("Mundial de futbol Brasil: Semifinales", dt.date(2014, 7, 8)),
    ("Mundial de futbol Brasil: Tercer y cuarto lugar", dt.date(2014, 7, 12)),
    ("Mundial de futbol Brasil: Final", dt.date(2014, 7, 13)),
)


@dataclass(frozen=True)
class _Family:
    name: str
    weight: float  # share of items (real item counts)
    class_base: int  # first class number
    classes: int  # how many classes
    mean: float  # typical daily units per store for an average item
    weekend: float  # weekly-profile amplitude (1 = average)
    by_weight: float = 0.0  # share of its items sold by weight (fractional unit_sales)
    quake: float = 0.0  # extra demand right after the earthquake


FAMILIES: tuple[_Family, ...] = (
    _Family("GROCERY I", 1334, 1002, 60, 3.0, 1.0, quake=0.9),
    _Family("BEVERAGES", 613, 1120, 30, 5.0, 1.2, quake=1.5),
    _Family("CLEANING", 446, 3002, 25, 2.0, 0.9, quake=0.8),
    _Family("PRODUCE", 306, 2002, 20, 4.0, 1.3, by_weight=0.7),
    _Family("DAIRY", 242, 2112, 15, 3.5, 1.1),
    _Family("PERSONAL CARE", 153, 4102, 12, 1.5, 0.7, quake=0.7),
    _Family("BREAD/BAKERY", 134, 2702, 10, 3.0, 1.1),
    _Family("HOME CARE", 108, 3102, 8, 1.2, 0.8, quake=0.6),
    _Family("DELI", 91, 2602, 8, 1.5, 1.0, by_weight=0.5),
    _Family("MEATS", 84, 2302, 8, 2.0, 1.3, by_weight=0.8),
    _Family("HOME AND KITCHEN I", 77, 6002, 6, 0.4, 0.8),
    _Family("LIQUOR,WINE,BEER", 73, 1302, 6, 1.5, 2.0),
    _Family("FROZEN FOODS", 55, 2202, 5, 1.0, 1.0),
    _Family("POULTRY", 54, 2402, 4, 2.5, 1.2, by_weight=0.8),
    _Family("HOME AND KITCHEN II", 45, 6302, 4, 0.3, 0.8),
    _Family("EGGS", 41, 2502, 3, 2.5, 1.0, quake=0.5),
    _Family("LAWN AND GARDEN", 26, 6802, 3, 0.3, 0.9),
    _Family("PREPARED FOODS", 26, 2986, 3, 1.0, 1.0),
    _Family("AUTOMOTIVE", 20, 6810, 3, 0.3, 0.9),
    _Family("BEAUTY", 19, 4252, 3, 0.4, 0.8),
    _Family("GROCERY II", 14, 1040, 3, 0.6, 1.0),
    _Family("SCHOOL AND OFFICE SUPPLIES", 15, 3034, 3, 0.2, 0.6),
    _Family("PET SUPPLIES", 10, 3044, 2, 0.5, 0.9),
    _Family("SEAFOOD", 8, 2416, 2, 0.8, 1.1, by_weight=0.8),
    _Family("BABY CARE", 1, 4210, 1, 0.6, 0.8, quake=0.6),
    _Family("MAGAZINES", 6, 4500, 1, 0.3, 0.9),
    _Family("BOOKS", 1, 4002, 1, 0.1, 0.8),
)
PERISHABLE_FAMILIES = frozenset({"PRODUCE", "DAIRY", "BREAD/BAKERY", "POULTRY", "MEATS", "EGGS", "SEAFOOD", "DELI"})
# The first items take these families in turn, so even a small catalogue is varied.
_CORE_FAMILIES = (
    "GROCERY I", "BEVERAGES", "PRODUCE", "CLEANING", "DAIRY", "BREAD/BAKERY", "POULTRY", "MEATS",
    "PERSONAL CARE", "DELI", "EGGS", "LIQUOR,WINE,BEER", "HOME CARE", "SEAFOOD", "FROZEN FOODS",
)  # fmt: skip

_STORE_TYPES = ("A", "B", "C", "D", "E")
_TYPE_WEIGHTS = np.array([9, 8, 15, 18, 4], dtype=float)
_TYPE_SCALE = {"A": 1.8, "B": 1.1, "C": 0.75, "D": 1.1, "E": 0.8}
_TYPE_CLUSTERS = {"A": (5, 11, 14, 17), "B": (6, 16), "C": (3, 7, 12, 15), "D": (1, 2, 4, 8, 9, 13), "E": (10,)}


@dataclass(frozen=True)
class DemandPatterns:
    """The calendar effects on demand in the synthetic data (multipliers; 1.0 = no effect).

    ``weekday`` Monday..Sunday (each item carries a share of it: its weekend amplitude), ``month``
    January..December, ``payday_lift`` on the 15th and the last day of a month, ``payday_after`` on
    the day after (the 16th and the 1st). Other generators (``edgeship firmware-sim``) read them from
    :data:`DEMAND_PATTERNS` so their demand looks like the training data's::

        >>> DEMAND_PATTERNS.weekday[6] > DEMAND_PATTERNS.weekday[1]   # Sunday busier than Tuesday
        True
        >>> DEMAND_PATTERNS.factor(dt.date(2017, 8, 15)) == DEMAND_PATTERNS.weekday[1] * DEMAND_PATTERNS.month[7] * 1.18
        True
    """

    weekday: tuple[float, ...]
    month: tuple[float, ...]
    payday_lift: float
    payday_after: float

    def factor(self, day: dt.date) -> float:
        """The full weekday × month × payday multiplier of ``day``."""
        last = (day + dt.timedelta(days=1)).day == 1
        pay = self.payday_lift if day.day == 15 or last else self.payday_after if day.day in (16, 1) else 1.0
        return self.weekday[day.weekday()] * self.month[day.month - 1] * pay


#: The synthetic data's calendar effects (public; :func:`generate` uses exactly these).
DEMAND_PATTERNS = DemandPatterns(
    weekday=(0.93, 0.86, 0.89, 0.87, 0.98, 1.20, 1.27),
    month=(0.94, 0.95, 0.98, 0.98, 1.00, 0.98, 1.02, 1.00, 0.97, 0.99, 1.00, 1.14),
    payday_lift=1.18,
    payday_after=1.07,
)
_DOW = np.array(DEMAND_PATTERNS.weekday)
_MONTH = np.array(DEMAND_PATTERNS.month)
_PAYDAY_LIFT = DEMAND_PATTERNS.payday_lift
_PAYDAY_AFTER = DEMAND_PATTERNS.payday_after
_HOLIDAY_LIFT = {"Holiday": 1.30, "Transfer": 1.30, "Additional": 1.15, "Bridge": 1.12, "Event": 1.08, "Work Day": 0.93}
_RETURN_RATE = 0.0015
_PROMO_SHARE = 0.08
_PROMO_RUN_MEAN = 4.0
_PROMO_STORE_SHARE = 0.85

# Anchors of the WTI price (USD) the synthetic oil series follows; the 2014-15 crash included.
_OIL_ANCHORS = (
    (dt.date(2012, 1, 1), 100.0),
    (dt.date(2013, 1, 1), 93.0),
    (dt.date(2014, 6, 20), 106.0),
    (dt.date(2015, 1, 20), 46.0),
    (dt.date(2015, 6, 1), 60.0),
    (dt.date(2016, 2, 11), 27.0),
    (dt.date(2016, 6, 8), 51.0),
    (dt.date(2017, 1, 6), 54.0),
    (dt.date(2017, 6, 21), 42.5),
    (dt.date(2017, 8, 31), 47.0),
    (dt.date(2018, 6, 1), 66.0),
)


# ------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    paths: dict[str, Path]
    rows: dict[str, int]
    start: dt.date  # first day of train.csv
    end: dt.date  # last day of train.csv
    test_start: dt.date
    test_end: dt.date
    holidays_end: dt.date
    stores: int
    items: int
    days: int
    seed: int
    difficulty: str = "easy"
    bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "out_dir": str(self.out_dir),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "rows": dict(self.rows),
            "bytes": dict(self.bytes),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
            "holidays_end": self.holidays_end.isoformat(),
            "stores": self.stores,
            "items": self.items,
            "days": self.days,
            "seed": self.seed,
            "difficulty": self.difficulty,
            "seconds": round(self.seconds, 3),
        }

    def describe(self) -> str:
        """A few human lines for the CLI."""
        lines = [
            f"synthetic Favorita data in {self.out_dir} (seed {self.seed}, {self.seconds:.1f} s)",
            f"  train {self.start} .. {self.end} ({self.days} days), test {self.test_start} .. {self.test_end}",
            f"  {self.stores} stores x {self.items} items, holidays to {self.holidays_end}",
        ]
        for name in (*FILES, ORACLE_FILE):
            if name in self.rows:
                lines.append(f"  {name:<20} {self.rows[name]:>12,} rows {self.bytes.get(name, 0):>14,} bytes")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


# ------------------------------------------------------------------------------------ holidays


def easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def _transfer_target(day: dt.date) -> dt.date | None:
    """Holidays on Tuesday-Thursday move to the Friday of that week (as Ecuador often did)."""
    if day.weekday() in (1, 2, 3):
        return day + dt.timedelta(days=4 - day.weekday())
    return None


def holiday_table(first: dt.date, last: dt.date) -> pd.DataFrame:
    """The ``holidays_events.csv`` rows dated in ``[first, last]``, sorted by date.

    National holidays (with transfers, bridges and make-up work days), regional holidays for the
    states and local holidays for the cities in :data:`CITIES`, and events (Mother's day, Black
    Friday, Cyber Monday, the 2014 World Cup, the Manabí earthquake with its 30 follow-up days).
    Columns are the real ones; ``date`` holds :class:`datetime.date`, ``transferred`` bools.
    """
    rows: list[tuple[dt.date, str, str, str, str, bool]] = []

    def add(day: dt.date, type_: str, locale: str, name: str, desc: str, transferred: bool = False) -> None:
        rows.append((day, type_, locale, name, desc, transferred))

    def holiday(day: dt.date, locale: str, name: str, desc: str, transferable: bool) -> None:
        target = _transfer_target(day) if transferable else None
        if target is None:
            add(day, "Holiday", locale, name, desc)
        else:
            add(day, "Holiday", locale, name, desc, True)
            add(target, "Transfer", locale, name, f"Traslado {desc}")

    for year in range(first.year - 1, last.year + 1):
        for desc, month, day_, transferable in _NATIONAL_FIXED:
            day = dt.date(year, month, day_)
            holiday(day, "National", "Ecuador", desc, transferable)
            if desc in _BRIDGEABLE and day.weekday() in (1, 3):
                bridge = day + dt.timedelta(days=-1 if day.weekday() == 1 else 1)
                add(bridge, "Bridge", "National", "Ecuador", f"Puente {desc}")
                makeup = bridge + dt.timedelta(days=(5 - bridge.weekday()) % 7 + 7)  # a Saturday after
                add(makeup, "Work Day", "National", "Ecuador", f"Recupero puente {desc}")
        for k in (4, 3, 2, 1):
            add(dt.date(year, 12, 25 - k), "Additional", "National", "Ecuador", f"Navidad-{k}")
        add(dt.date(year, 12, 26), "Additional", "National", "Ecuador", "Navidad+1")
        add(dt.date(year, 12, 31), "Additional", "National", "Ecuador", "Primer dia del ano-1")
        sunday = easter(year)
        add(sunday - dt.timedelta(days=48), "Holiday", "National", "Ecuador", "Carnaval")
        add(sunday - dt.timedelta(days=47), "Holiday", "National", "Ecuador", "Carnaval")
        add(sunday - dt.timedelta(days=2), "Holiday", "National", "Ecuador", "Viernes Santo")
        mothers = _nth_weekday(year, 5, 6, 2)
        add(mothers - dt.timedelta(days=1), "Event", "National", "Ecuador", "Dia de la Madre-1")
        add(mothers, "Event", "National", "Ecuador", "Dia de la Madre")
        if year >= 2014:
            black_friday = _nth_weekday(year, 11, 3, 4) + dt.timedelta(days=1)
            add(black_friday, "Event", "National", "Ecuador", "Black Friday")
            add(black_friday + dt.timedelta(days=3), "Event", "National", "Ecuador", "Cyber Monday")
        for state, entries in _REGIONAL_HOLIDAYS.items():
            for desc, month, day_ in entries:
                add(dt.date(year, month, day_), "Holiday", "Regional", state, desc)
        for city, entries in _LOCAL_HOLIDAYS.items():
            for desc, month, day_ in entries:
                day = dt.date(year, month, day_)
                if desc in _LOCAL_ADDITIONAL:
                    add(day - dt.timedelta(days=1), "Additional", "Local", city, f"{desc}-1")
                holiday(day, "Local", city, desc, desc in _LOCAL_TRANSFERABLE)
    for desc, day in _MUNDIAL_2014:
        add(day, "Event", "National", "Ecuador", desc)
    add(EARTHQUAKE, "Event", "National", "Ecuador", "Terremoto Manabi")
    for k in range(1, 31):
        add(EARTHQUAKE + dt.timedelta(days=k), "Event", "National", "Ecuador", f"Terremoto Manabi+{k}")

    table = pd.DataFrame(rows, columns=["date", "type", "locale", "locale_name", "description", "transferred"])
    table = table[(table["date"] >= first) & (table["date"] <= last)]
    return table.sort_values("date", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------ entities


@dataclass
class _World:
    """Everything drawn once: stores, items, pairs, day-level effects, promotions."""

    store_nbr: np.ndarray
    city: list[str]
    state: list[str]
    store_type: list[str]
    cluster: np.ndarray
    store_scale: np.ndarray  # (S,)
    growth: np.ndarray  # (S,) per year
    tx_base: np.ndarray  # (S,)
    item_nbr: np.ndarray
    family: list[str]
    item_class: np.ndarray
    perishable: np.ndarray
    by_weight: np.ndarray  # (I,) bool
    unit_weight: np.ndarray  # (I,) kg per unit for by-weight items
    weekend: np.ndarray  # (I,)
    quake: np.ndarray  # (I,)
    promo_lift: np.ndarray  # (I,)
    dispersion: np.ndarray  # (I,)
    pair_base: np.ndarray  # (S, I) expected daily units before day effects; 0 = not carried
    dates: np.ndarray  # (D,) datetime64[D], train days then test days
    day_effect: np.ndarray  # (D, I) weekly x payday x month, per item family amplitude
    store_day: np.ndarray  # (D, S) trend x holidays x closures x store-day shocks
    quake_effect: np.ndarray  # (15, S, I) multipliers for the days after the earthquake
    quake_start: int  # day index of the earthquake (may be outside the simulated days)
    campaign: np.ndarray  # (D, I) bool: item on promotion campaign that day
    holidays: pd.DataFrame
    # hard profile only (None in the easy one): see _harden
    pair_level: np.ndarray | None = None  # (D, S, I) float32 multiplier: shifts, trends, intro/discontinuation, openings
    stockout: np.ndarray | None = None  # (D, S, I) bool: zero sales despite demand
    promo_lift_day: np.ndarray | None = None  # (D, I) lift on a campaign day: family-specific, decaying over the run
    promo_known_from: np.datetime64 | None = None  # onpromotion is empty in train.csv before this day


def _seed_seq(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _assign_families(rng: np.random.Generator, n: int) -> list[str]:
    names = [f.name for f in FAMILIES]
    weights = np.array([f.weight for f in FAMILIES], dtype=float)
    core = list(_CORE_FAMILIES[: min(n, len(_CORE_FAMILIES))])
    rest = rng.choice(len(names), size=max(0, n - len(core)), p=weights / weights.sum())
    families = core + [names[k] for k in rest]
    order = rng.permutation(n)
    return [families[k] for k in order]


def _build_world(stores: int, items: int, start: dt.date, end: dt.date, seed: int) -> _World:
    rng = _seed_seq(seed, 0)
    fam = {f.name: f for f in FAMILIES}

    # Stores.
    city: list[str] = []
    state: list[str] = []
    extra = rng.choice(len(CITIES), size=max(0, stores - len(CITIES)), p=_city_weights())
    for s in range(stores):
        c, st = CITIES[s] if s < len(CITIES) else CITIES[int(extra[s - len(CITIES)])]
        city.append(c)
        state.append(st)
    types = [_STORE_TYPES[k] for k in rng.choice(5, size=stores, p=_TYPE_WEIGHTS / _TYPE_WEIGHTS.sum())]
    cluster = np.array([rng.choice(_TYPE_CLUSTERS[t]) for t in types], dtype=np.int64)
    cluster_effect = np.exp(rng.normal(0.0, 0.2, size=18))
    store_scale = (
        np.array([_TYPE_SCALE[t] for t in types]) * cluster_effect[cluster] * np.exp(rng.normal(0.0, 0.15, stores))
    )
    growth = rng.normal(0.05, 0.04, stores)
    tx_base = np.round(500 + 900 * store_scale * np.exp(rng.normal(0.0, 0.1, stores)))

    # Items.
    gap = max(1, min(400, (999_999 - 103_520) // max(items, 1)))
    item_nbr = 103_520 + np.concatenate([[0], np.cumsum(rng.integers(1, gap + 1, items - 1))]).astype(np.int64)
    family = _assign_families(rng, items)
    fams = [fam[f] for f in family]
    item_class = np.array([f.class_base + 2 * int(rng.integers(0, f.classes)) for f in fams], dtype=np.int64)
    class_effect = np.exp(((item_class * 2654435761) % 1000) / 1000.0 * 0.6 - 0.3)  # stable per class
    perishable = np.array([int(f in PERISHABLE_FAMILIES) for f in family], dtype=np.int64)
    by_weight = np.array([rng.random() < fm.by_weight for fm in fams], dtype=bool)
    unit_weight = np.round(rng.uniform(0.25, 1.6, items), 3)
    weekend = np.array([fm.weekend for fm in fams]) * np.exp(rng.normal(0.0, 0.1, items))
    quake = np.array([fm.quake for fm in fams]) * rng.uniform(0.6, 1.4, items)
    promo_lift = np.exp(rng.normal(np.log(1.9), 0.25, items))
    slow = rng.random(items) < 0.25
    item_base = (
        np.array([fm.mean for fm in fams])
        * class_effect
        * np.exp(rng.normal(0.0, 0.8, items))
        * np.where(slow, rng.uniform(0.03, 0.25, items), 1.0)
    )
    dispersion = np.where(slow, 0.8, 3.0) * np.exp(rng.normal(0.0, 0.2, items))

    # Store x item: assortment and affinity.
    carried = rng.random((stores, items)) > 0.08
    for i in np.flatnonzero(~carried.any(axis=0)):
        carried[int(rng.integers(0, stores)), i] = True
    affinity = np.exp(rng.normal(0.0, 0.35, (stores, items)))
    pair_base = np.where(carried, store_scale[:, None] * item_base[None, :] * affinity, 0.0)

    # Days: train then test.
    test_end = end + dt.timedelta(days=TEST_DAYS)
    dates = np.arange(np.datetime64(start, "D"), np.datetime64(test_end, "D") + 1)
    n_days = len(dates)
    idx = pd.DatetimeIndex(dates.astype("datetime64[ns]"))
    dow = np.asarray(idx.day_of_week)
    dom = np.asarray(idx.day)
    month = np.asarray(idx.month)
    last_dom = np.asarray((idx + pd.Timedelta(days=1)).day) == 1
    payday = np.where((dom == 15) | last_dom, _PAYDAY_LIFT, np.where((dom == 16) | (dom == 1), _PAYDAY_AFTER, 1.0))
    day_effect = (1.0 + weekend[None, :] * (_DOW[dow] - 1.0)[:, None]) * (payday * _MONTH[month - 1])[:, None]

    # Store-day effects: trend, holidays in the store's locale, closures, shocks.
    holidays = holiday_table(dt.date(start.year, 1, 1), end + dt.timedelta(days=HOLIDAY_HORIZON_DAYS))
    years = (dates - dates[0]).astype(np.float64) / 365.25
    store_day = np.exp(growth[None, :] * years[:, None])
    store_day *= np.exp(rng.normal(0.0, 0.07, (n_days, stores)))
    lift = np.ones((n_days, stores))
    day_pos = {d: k for k, d in enumerate(dates.astype(object))}
    city_arr, state_arr = np.array(city), np.array(state)
    for row in holidays.itertuples(index=False):
        k = day_pos.get(row.date)
        if k is None or row.transferred or row.description.startswith("Terremoto"):
            continue
        if row.locale == "National":
            where = np.ones(stores, dtype=bool)
        elif row.locale == "Regional":
            where = state_arr == row.locale_name
        else:
            where = city_arr == row.locale_name
        factor = _HOLIDAY_LIFT[row.type]
        lift[k, where] = np.maximum(lift[k, where], factor) if factor >= 1 else lift[k, where] * factor
    store_day *= lift
    for k, d in enumerate(dates.astype(object)):
        if d.month == 12 and d.day == 25:  # every store is closed on Christmas day
            store_day[k, :] = 0.0
        elif d.month == 1 and d.day == 1:  # most are closed on New Year's day
            open_ = _seed_seq(seed, 5, d.year).random(stores) < 0.15
            store_day[k, :] = np.where(open_, 0.5 * store_day[k, :], 0.0)

    # Earthquake: a spike for some families, stronger in Manabi, decaying over two weeks.
    # Day k of the array is quake_start + k days from the first day (quake_start may be < 0).
    q0 = int((np.datetime64(EARTHQUAKE, "D") - dates[0]).astype(np.int64))
    span = 15
    quake_effect = np.zeros((0, stores, items))
    if q0 + span > 0 and q0 < n_days:
        local = np.where(state_arr == "Manabi", 1.6, 1.0)
        decay = np.exp(-np.arange(span) / 4.0)
        quake_effect = 1.0 + decay[:, None, None] * local[None, :, None] * quake[None, None, :]

    # Promotions: item-level campaigns (runs of days); stores join most campaign days.
    prng = _seed_seq(seed, 1)
    start_prob = _PROMO_SHARE / (_PROMO_RUN_MEAN * _PROMO_STORE_SHARE)
    starts = prng.random((n_days, items)) < start_prob
    lengths = prng.geometric(1.0 / _PROMO_RUN_MEAN, size=(n_days, items))
    diff = np.zeros((n_days + 1, items), dtype=np.int32)
    d_idx, i_idx = np.nonzero(starts)
    np.add.at(diff, (d_idx, i_idx), 1)
    np.add.at(diff, (np.minimum(d_idx + lengths[d_idx, i_idx], n_days), i_idx), -1)
    campaign = np.cumsum(diff[:-1], axis=0) > 0

    return _World(
        store_nbr=np.arange(1, stores + 1, dtype=np.int64),
        city=city,
        state=state,
        store_type=types,
        cluster=cluster,
        store_scale=store_scale,
        growth=growth,
        tx_base=tx_base,
        item_nbr=item_nbr,
        family=family,
        item_class=item_class,
        perishable=perishable,
        by_weight=by_weight,
        unit_weight=unit_weight,
        weekend=weekend,
        quake=quake,
        promo_lift=promo_lift,
        dispersion=dispersion,
        pair_base=pair_base,
        dates=dates,
        day_effect=day_effect,
        store_day=store_day,
        quake_effect=quake_effect,
        quake_start=int(q0),
        campaign=campaign,
        holidays=holidays,
    )


def _city_weights() -> np.ndarray:
    w = np.ones(len(CITIES))
    w[0], w[1] = 12.0, 6.0  # most Favorita stores are in Quito and Guayaquil
    return w / w.sum()


# ------------------------------------------------------------------------------------- writing


class _AtomicText:
    """Write a text file via a temporary file in the same folder; fsync, then rename."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        self.fh: TextIO = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def __enter__(self) -> TextIO:
        return self.fh

    def __exit__(self, exc_type, exc, _tb) -> None:
        try:
            if exc_type is None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
            self.fh.close()
            if exc_type is None:
                os.chmod(self.tmp, 0o644)  # mkstemp makes 0600; data files are meant to be shared
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def _write_frame(path: Path, frame: pd.DataFrame) -> int:
    with _AtomicText(path) as fh:
        frame.to_csv(fh, index=False, lineterminator="\n")
    return len(frame)


def _date_text(dates: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(dates, unit="D").astype(object)


def _harden(world: _World, seed: int) -> _World:
    """The hard profile: the world a model must *learn* rather than average.

    * per-pair level shifts (~1 per 300 days, log-jump N(0, 0.45)) and trends (N(0, 0.35) per year);
    * store shocks AR(1) (phi 0.85) instead of independent day to day;
    * item introductions (15% of items start after the first day) and discontinuations (10% stop);
    * store openings (one store in six, at least one, opens during the first 60% of the days);
    * stock-outs: runs (mean 4 days, start chance 0.4%/day) of zero sales despite demand;
    * promotion lifts that differ by family and decay over a campaign (tau 2–10 days by family);
    * ``onpromotion`` empty for the first 30% of the days (the real file's early years).
    """
    rng = _seed_seq(seed, 8)
    n_days, n_stores, n_items = len(world.dates), len(world.store_nbr), len(world.item_nbr)
    t = np.arange(n_days, dtype=np.float64)[:, None, None]
    log_level = rng.normal(0.0, 0.35, (1, n_stores, n_items)) * t / 365.25  # trends
    shifts = rng.random((n_days, n_stores, n_items)) < 1.0 / 300
    shifts[0] = False
    log_level += np.cumsum(np.where(shifts, rng.normal(0.0, 0.45, shifts.shape), 0.0), axis=0)
    level = np.exp(log_level).astype(np.float32)
    intro = np.where(rng.random(n_items) < 0.15, rng.integers(n_days // 10, n_days - 20, n_items), 0)
    stop = np.where(rng.random(n_items) < 0.10, rng.integers(n_days // 3, n_days, n_items), n_days)
    alive_item = (t[:, :, 0] >= intro[None, :]) & (t[:, :, 0] < stop[None, :])  # (D, I)
    opens = np.zeros(n_stores, np.int64)  # store 1 always trades; about one store in six opens late
    late = rng.permutation(np.arange(1, n_stores))[: max(1, round(n_stores / 6))] if n_stores > 1 else []
    opens[late] = rng.integers(n_days // 10, int(n_days * 0.6) + 1, len(late))
    alive_store = t[:, :, 0] >= opens[None, :]  # (D, S)
    level *= alive_item[:, None, :]
    # AR(1) store shocks replace the independent ones
    shocks = np.zeros((n_days, n_stores))
    eps = rng.normal(0.0, 0.12 * np.sqrt(1 - 0.85**2), (n_days, n_stores))
    for k in range(1, n_days):
        shocks[k] = 0.85 * shocks[k - 1] + eps[k]
    store_day = world.store_day * np.exp(shocks) * alive_store  # a store not yet open sells nothing
    # stock-outs
    starts = rng.random((n_days, n_stores, n_items)) < _STOCKOUT_START
    lengths = rng.geometric(1.0 / _STOCKOUT_RUN_MEAN, size=starts.shape)
    diff = np.zeros((n_days + 1, n_stores, n_items), np.int16)
    d, s_, i = np.nonzero(starts)
    np.add.at(diff, (d, s_, i), 1)
    np.add.at(diff, (np.minimum(d + lengths[d, s_, i], n_days), s_, i), -1)
    stockout = np.cumsum(diff[:-1], axis=0) > 0
    # family-specific decaying promotion lifts
    fams = sorted(set(world.family))
    fam_idx = np.array([fams.index(f) for f in world.family])
    fam_lift = np.exp(rng.normal(np.log(1.9), 0.45, len(fams)))
    fam_tau = rng.uniform(2.0, 10.0, len(fams))
    run_pos = np.zeros((n_days, n_items))
    for k in range(1, n_days):
        run_pos[k] = np.where(world.campaign[k - 1], run_pos[k - 1] + 1, 0)
    item_lift = fam_lift[fam_idx] * np.exp(rng.normal(0.0, 0.15, n_items))
    promo_lift_day = 1.0 + (item_lift[None, :] - 1.0) * np.exp(-run_pos / fam_tau[fam_idx][None, :])
    known_from = world.dates[0] + np.timedelta64(int(n_days * 0.3), "D")
    return replace(
        world,
        store_day=store_day,
        pair_level=level,
        stockout=stockout,
        promo_lift_day=promo_lift_day,
        promo_known_from=known_from,
    )


def _mu(world: _World, a: int, b: int, promo: np.ndarray) -> np.ndarray:
    """Expected units (before noise and stock-outs), D x S x I, for days [a, b) with store flags ``promo``."""
    mu = world.pair_base[None, :, :] * world.day_effect[a:b, None, :] * world.store_day[a:b, :, None]
    if world.pair_level is not None:
        mu = mu * world.pair_level[a:b]
    lift = world.promo_lift[None, None, :] if world.promo_lift_day is None else world.promo_lift_day[a:b, None, :]
    mu = mu * np.where(promo, lift, 1.0)
    q_lo, q_hi = max(a, world.quake_start), min(b, world.quake_start + len(world.quake_effect))
    if q_lo < q_hi:
        mu[q_lo - a : q_hi - a] *= world.quake_effect[q_lo - world.quake_start : q_hi - world.quake_start]
    return mu


def _oracle_log(world: _World, mu: np.ndarray, seed: int, key: int) -> np.ndarray:
    """E[log1p(sales)] of each cell given every latent factor (Monte Carlo over the count and weight
    noise); stock-outs are unforeseeable, so the expectation weighs them with their steady-state chance."""
    rng = _seed_seq(seed, 7, key)
    r = world.dispersion[None, None, :]
    out = np.zeros(mu.shape)
    for _ in range(_ORACLE_DRAWS):
        counts = rng.negative_binomial(np.broadcast_to(r, mu.shape), r / (r + mu)).astype(np.float64)
        weight = np.exp(rng.normal(0.0, 0.12, mu.shape)) * world.unit_weight[None, None, :]
        sales = np.where(world.by_weight[None, None, :], counts * weight, counts)
        out += np.log1p(sales)
    out /= _ORACLE_DRAWS
    if world.stockout is not None:
        p = _STOCKOUT_START * _STOCKOUT_RUN_MEAN / (1 + _STOCKOUT_START * _STOCKOUT_RUN_MEAN)
        out *= 1.0 - p
    return out


def _oracle_frame(world: _World, a: int, mu: np.ndarray, promo: np.ndarray, seed: int) -> pd.DataFrame:
    n_stores, n_items = world.pair_base.shape
    d, s, i = np.indices(mu.shape).reshape(3, -1)
    carried = world.pair_base[s, i] > 0
    log_mu = _oracle_log(world, mu, seed, a)
    return pd.DataFrame(
        {
            "date": _date_text(world.dates[a : a + mu.shape[0]])[d],
            "store_nbr": world.store_nbr[s],
            "item_nbr": world.item_nbr[i],
            "onpromotion": np.where(promo[d, s, i], "True", "False"),
            "oracle_log": np.round(log_mu[d, s, i], 6),
        }
    )[carried]


def _blocks(n_days: int, cells_per_day: int, limit: int = 2_000_000) -> Iterator[tuple[int, int]]:
    size = max(1, limit // max(cells_per_day, 1))
    for a in range(0, n_days, size):
        yield a, min(n_days, a + size)


def _simulate_block(world: _World, a: int, b: int, seed: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sales (float, D x S x I), store promotion flags and expected units for days [a, b)."""
    rng = _seed_seq(seed, 2, block)
    n_stores, n_items = world.pair_base.shape
    joined = rng.random((b - a, n_stores, n_items)) < _PROMO_STORE_SHARE
    promo = world.campaign[a:b, None, :] & joined
    mu = _mu(world, a, b, promo)
    r = np.broadcast_to(world.dispersion[None, None, :], mu.shape)
    counts = rng.negative_binomial(r, r / (r + mu)).astype(np.float64)
    weight = np.exp(rng.normal(0.0, 0.12, mu.shape)) * world.unit_weight[None, None, :]
    sales = np.where(world.by_weight[None, None, :], np.round(counts * weight, 3), counts)
    sales = np.where((counts > 0) & (sales <= 0), 0.001, sales)
    if world.stockout is not None:
        sales = np.where(world.stockout[a:b], 0.0, sales)
    # Returns: a net negative day for the item at the store (only where it is sold and open).
    open_ = (world.pair_base[None, :, :] > 0) & (world.store_day[a:b, :, None] > 0)
    if world.pair_level is not None:
        open_ &= world.pair_level[a:b] > 0
    returns = open_ & (rng.random(mu.shape) < _RETURN_RATE)
    if returns.any():
        units = 1.0 + rng.poisson(0.4, mu.shape)
        kg = np.round(world.unit_weight[None, None, :] * rng.uniform(0.2, 1.5, mu.shape) + 0.001, 3)
        sales = np.where(returns, -np.where(world.by_weight[None, None, :], kg, units), sales)
    return sales, promo, mu


def _train_rows(
    world: _World, n_train: int, seed: int, oracle: list[pd.DataFrame] | None = None
) -> Iterator[pd.DataFrame]:
    """Blocks of train.csv rows, in (date, store, item) order (``oracle`` collects the last days' truth)."""
    n_stores, n_items = world.pair_base.shape
    promo_known = world.promo_known_from if world.promo_known_from is not None else np.datetime64(PROMO_KNOWN_FROM, "D")
    first_id = 0
    for block, (a, b) in enumerate(_blocks(n_train, n_stores * n_items)):
        sales, promo, mu = _simulate_block(world, a, b, seed, block)
        lo = max(a, n_train - ORACLE_TRAIN_DAYS)
        if oracle is not None and lo < b:
            oracle.append(_oracle_frame(world, lo, mu[lo - a :], promo[lo - a :], seed))
        d, s, i = np.nonzero(sales)
        dates = world.dates[a:b]
        promo_text = np.array(["False", "True"], dtype=object)[promo[d, s, i].astype(np.int8)]
        promo_text[dates[d] < promo_known] = ""
        frame = pd.DataFrame(
            {
                "id": np.arange(first_id, first_id + len(d), dtype=np.int64),
                "date": _date_text(dates)[d],
                "store_nbr": world.store_nbr[s],
                "item_nbr": world.item_nbr[i],
                "unit_sales": sales[d, s, i],
                "onpromotion": promo_text,
            }
        )
        first_id += len(d)
        yield frame


def _transactions(world: _World, n_train: int, seed: int) -> pd.DataFrame:
    rng = _seed_seq(seed, 3)
    n_days, n_stores = n_train, len(world.store_nbr)
    activity = world.store_day[:n_train] * world.day_effect[:n_train].mean(axis=1)[:, None]
    tx = np.round(world.tx_base[None, :] * activity**0.8 * np.exp(rng.normal(0.0, 0.05, (n_days, n_stores))))
    d, s = np.nonzero(world.store_day[:n_train] > 0)
    return pd.DataFrame(
        {
            "date": _date_text(world.dates[:n_train])[d],
            "store_nbr": world.store_nbr[s],
            "transactions": tx[d, s].astype(np.int64),
        }
    )


def _oil(world: _World, seed: int) -> pd.DataFrame:
    rng = _seed_seq(seed, 4)
    days = world.dates
    weekday = ((days.astype(np.int64) + 3) % 7) < 5
    days = days[weekday]
    anchor_x = np.array([np.datetime64(d, "D").astype(np.int64) for d, _ in _OIL_ANCHORS], dtype=float)
    anchor_y = np.log([p for _, p in _OIL_ANCHORS])
    base = np.exp(np.interp(days.astype(np.int64).astype(float), anchor_x, anchor_y))
    noise = np.zeros(len(days))
    shocks = rng.normal(0.0, 0.018, len(days))
    for k in range(1, len(days)):  # AR(1) wiggle around the anchors
        noise[k] = 0.93 * noise[k - 1] + shocks[k]
    price = np.round(base * np.exp(noise), 2)
    text = np.array([f"{p:.2f}" for p in price], dtype=object)
    text[rng.random(len(days)) < 0.035] = ""
    return pd.DataFrame({"date": _date_text(days), "dcoilwtico": text})


def _test_rows(
    world: _World, n_train: int, first_id: int, seed: int, oracle: list[pd.DataFrame] | None = None
) -> pd.DataFrame:
    rng = _seed_seq(seed, 6)
    n_stores, n_items = world.pair_base.shape
    n_test = len(world.dates) - n_train
    joined = rng.random((n_test, n_stores, n_items)) < _PROMO_STORE_SHARE
    promo = world.campaign[n_train:, None, :] & joined
    if oracle is not None:
        oracle.append(_oracle_frame(world, n_train, _mu(world, n_train, len(world.dates), promo), promo, seed))
    d, s, i = np.indices((n_test, n_stores, n_items)).reshape(3, -1)
    dates = world.dates[n_train:]
    promo_text = np.array(["False", "True"], dtype=object)[promo[d, s, i].astype(np.int8)]
    promo_text[dates[d] < (world.promo_known_from or np.datetime64(PROMO_KNOWN_FROM, "D"))] = ""
    return pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + len(d), dtype=np.int64),
            "date": _date_text(dates)[d],
            "store_nbr": world.store_nbr[s],
            "item_nbr": world.item_nbr[i],
            "onpromotion": promo_text,
        }
    )


def _as_date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def generate(
    out_dir: str | os.PathLike[str],
    *,
    stores: int = 5,
    items: int = 50,
    days: int = 540,
    seed: int = 0,
    end: dt.date | str = dt.date(2017, 8, 15),
    difficulty: str = "easy",
    oracle: bool = True,
) -> SynthSummary:
    """Write the seven Favorita files for ``days`` training days ending on ``end``.

    ``test.csv`` covers the 16 days after ``end``; ``holidays_events.csv`` runs from January 1st
    of the first training year to ``end`` + 140 days; ``oil.csv`` covers training and test days.
    Existing files of the same names in ``out_dir`` are replaced (atomically). The default size
    (5 stores x 50 items x 540 days, ~80k train rows) takes well under a second.

    ``difficulty="hard"`` draws the world of :func:`_harden`. With ``oracle`` (default) it also
    writes :data:`ORACLE_FILE`: for every carried store x item on the last :data:`ORACLE_TRAIN_DAYS`
    training days and every test day, the true promotion flag (the one a shop would send, also on
    days without sales) and ``oracle_log``, the expected log1p(sales) given the world's latent state
    — the best any model could do, so a report can show each model's gap to it.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)} (got {difficulty!r})")
    for name, value, low in (("stores", stores, 1), ("items", items, 1), ("days", days, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low} (got {value!r})")
    if stores > 999:
        raise ValueError(f"stores must be at most 999 (got {stores})")
    if items > 800_000:
        raise ValueError(f"items must be at most 800000 to keep 6-digit item numbers (got {items})")
    t0 = time.perf_counter()
    end_date = _as_date(end)
    start = end_date - dt.timedelta(days=days - 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("generating synthetic Favorita data: %d stores x %d items x %d days -> %s", stores, items, days, out)

    world = _build_world(stores, items, start, end_date, seed)
    if difficulty == "hard":
        world = _harden(world, seed)
    paths = {name: out / name for name in FILES}
    truth: list[pd.DataFrame] | None = [] if oracle else None
    rows: dict[str, int] = {}

    # train.csv, streamed block by block.
    n_train_rows = 0
    with _AtomicText(paths["train.csv"]) as fh:
        header = True
        for frame in _train_rows(world, days, seed, truth):
            frame.to_csv(fh, index=False, header=header, lineterminator="\n")
            header = False
            n_train_rows += len(frame)
    rows["train.csv"] = n_train_rows

    rows["test.csv"] = _write_frame(paths["test.csv"], _test_rows(world, days, n_train_rows, seed, truth))
    if truth is not None:
        paths[ORACLE_FILE] = out / ORACLE_FILE
        rows[ORACLE_FILE] = _write_frame(paths[ORACLE_FILE], pd.concat(truth, ignore_index=True))
    rows["items.csv"] = _write_frame(
        paths["items.csv"],
        pd.DataFrame(
            {
                "item_nbr": world.item_nbr,
                "family": world.family,
                "class": world.item_class,
                "perishable": world.perishable,
            }
        ),
    )
    rows["stores.csv"] = _write_frame(
        paths["stores.csv"],
        pd.DataFrame(
            {
                "store_nbr": world.store_nbr,
                "city": world.city,
                "state": world.state,
                "type": world.store_type,
                "cluster": world.cluster,
            }
        ),
    )
    hol = world.holidays.copy()
    hol["date"] = [d.isoformat() for d in hol["date"]]
    hol["transferred"] = np.where(hol["transferred"].to_numpy(dtype=bool), "True", "False")
    rows["holidays_events.csv"] = _write_frame(paths["holidays_events.csv"], hol)
    rows["transactions.csv"] = _write_frame(paths["transactions.csv"], _transactions(world, days, seed))
    rows["oil.csv"] = _write_frame(paths["oil.csv"], _oil(world, seed))

    summary = SynthSummary(
        out_dir=out,
        paths=paths,
        rows=rows,
        start=start,
        end=end_date,
        test_start=end_date + dt.timedelta(days=1),
        test_end=end_date + dt.timedelta(days=TEST_DAYS),
        holidays_end=max(world.holidays["date"]) if len(world.holidays) else end_date,
        stores=stores,
        items=items,
        days=days,
        seed=seed,
        difficulty=difficulty,
        bytes={name: p.stat().st_size for name, p in paths.items()},
        seconds=time.perf_counter() - t0,
    )
    logger.info("wrote %d train rows in %.2f s", n_train_rows, summary.seconds)
    return summary
