"""``edgeship feedback report``: how the models fare where staff checked them, per site and version.

For each (site = device id, model version): ``count``, ``agreement`` (share of "right" verdicts),
``with_actuals`` (records carrying actual units), ``nwrmsle`` of the entered actuals against the
forecasts (root mean squared log1p error; every record weighs 1, since a record does not carry
the item's perishability), and ``worst_items``: the items with the largest mean absolute log1p error::

    rows = report(FeedbackSet("feedback/").records())
    write_csv(rows, sys.stdout); json.dumps(rows)
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, Any

from models.feedback import FeedbackRecord

__all__ = ["report", "write_csv", "COLUMNS"]

COLUMNS = ["site", "model", "version", "digest", "count", "agreement", "with_actuals", "nwrmsle", "worst_items"]


def report(records: Iterable[FeedbackRecord], *, worst: int = 3) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int, str], list[FeedbackRecord]] = defaultdict(list)
    for r in records:
        groups[(r.device_id, r.model.name, r.model.version, r.model.digest)].append(r)
    rows = []
    for (site, name, version, digest), recs in sorted(groups.items()):
        errs = [
            (r.request.item_nbr, math.log1p(r.actual_units) - math.log1p(r.forecast))
            for r in recs
            if r.actual_units is not None
        ]
        per_item: dict[int, list[float]] = defaultdict(list)
        for item, e in errs:
            per_item[item].append(abs(e))
        ranked = sorted(per_item.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))[:worst]
        rows.append(
            {
                "site": site,
                "model": name,
                "version": version,
                "digest": digest,
                "count": len(recs),
                "agreement": round(sum(r.verdict == "right" for r in recs) / len(recs), 4),
                "with_actuals": len(errs),
                "nwrmsle": round(math.sqrt(sum(e * e for _, e in errs) / len(errs)), 4) if errs else None,
                "worst_items": [{"item_nbr": i, "mean_abs_log_error": round(sum(v) / len(v), 4)} for i, v in ranked],
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], fh: IO[str]) -> None:
    w = csv.DictWriter(fh, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "worst_items": " ".join(f"{x['item_nbr']}:{x['mean_abs_log_error']}" for x in r["worst_items"])})
