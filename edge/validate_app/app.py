"""The field-validation app: a Gradio Blocks page in front of one edge agent.

Staff pick a store and a product (by name, with family and class), a day and promotion; the page
shows the live model's forecast (and the shadow / A-B candidate's beside it when one runs), the
model that answered (name, version, digest, variant), the item's recent daily sales from the
agent's lag state with the forecast days after it (each day up to the asked one), a
per-prediction explanation computed on the edge model (Shapley sampling,
:mod:`edge.serving.field_routes`), and a feedback form (right / wrong, actual units, comment). A
"Batch CSV" tab forecasts uploaded rows with per-row errors.

It talks to the agent only over HTTP (:class:`edge.validate_app.client.AgentClient`), so it runs on
the device beside the agent or on a staff laptop. Nothing is fetched from the internet: the theme
uses system fonts, analytics are off. Named API endpoints (``gradio_client``)::

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    c.predict("2017-08-16", "1", "103520", False, api_name="/predict")
    c.predict("2017-08-16", "1", "103520", False, api_name="/explain")
    c.predict("2017-08-16", "1", "103520", False, "wrong", 7, "shelf was empty", "ana", api_name="/feedback")

Start it with ``edgeship validate --agent URL`` or :func:`launch`.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from edge.validate_app.client import AgentClient, AgentError  # noqa: E402

__all__ = ["build", "launch", "theme", "parse_listen", "read_auth", "read_token"]

logger = logging.getLogger(__name__)

_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
_FIELDS = ("date", "store_nbr", "item_nbr")
_CONCURRENCY = 4  # requests each endpoint runs at once (the agent batches; a Pi has 4 cores)


def theme() -> gr.themes.Base:
    """Gradio's default look on system fonts only (its stock themes pull Google Fonts)."""
    return gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_MONO_FONTS)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen {value!r}: must be HOST:PORT, e.g. 127.0.0.1:7860")
    return host.strip("[]"), int(port)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"--token-file {path}: is empty")
    return token


def read_auth(path: Path) -> list[tuple[str, str]]:
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as exc:
        raise ValueError(f"--auth-file {path}: {exc.strerror}") from None
    pairs = [tuple(ln.split(":", 1)) for ln in lines if ":" in ln]
    if not pairs or len(pairs) != len(lines):
        raise ValueError(f"--auth-file {path}: every line must be user:password")
    return pairs  # type: ignore[return-value]


def _err(text: str) -> str:
    return f"<span class='field-error'>⚠ {text}</span>" if text else ""


def _field_errors(exc: AgentError) -> tuple[dict[str, str], str]:
    """Agent error details → message per form field (date / store_nbr / item_nbr) and the rest."""
    per: dict[str, list[str]] = {}
    rest: list[str] = []
    for d in exc.details:
        field = d.get("field", "")
        text = d.get("message", "").split(": ", 1)[-1]
        rule = d.get("rule", "")
        name = next((f for f in _FIELDS if field.endswith(f)), None)
        if name is None and rule == "known_pair":
            name = "item_nbr"
        if name is None:
            rest.append(d.get("message", ""))
        else:
            per.setdefault(name, []).append(text)
    if not exc.details:
        rest.append(exc.message)
    return {k: "; ".join(v) for k, v in per.items()}, "; ".join(rest)


def _row(date: str, store: Any, item: Any, promo: bool) -> dict[str, Any]:
    """The request row as the agent's contract names it; bad numbers go through for the agent to name."""

    def num(v: Any) -> Any:
        s = str(v or "").strip()
        return int(s) if s.isdigit() else s

    return {"date": str(date or "").strip(), "store_nbr": num(store), "item_nbr": num(item), "onpromotion": bool(promo)}


def _model_md(model: dict[str, Any], label: str = "Model") -> str:
    return (
        f"**{label}:** `{model['name']}` v{model['version']} · variant `{model['variant']}` ({model['runtime']})"
        f" · digest `{model['digest'][:12]}…`"
    )


class _App:
    def __init__(self, agent: AgentClient, validator: str = "") -> None:
        self.agent = agent
        self.validator = validator

    # -- catalogue --------------------------------------------------------------------------
    def choices(self) -> tuple[Any, Any, str, str]:
        try:
            cat = self.agent.catalogue()
        except AgentError as exc:
            return gr.update(), gr.update(), f"**Agent:** {self.agent.url} — ⚠ {exc.message}", ""
        stores = [(f"{s['store_nbr']} · {s['city']} ({s['type']}, cluster {s['cluster']})", str(s["store_nbr"])) for s in cat["stores"]]
        items = [(f"{i['item_nbr']} · {i['family']} / class {i['class']}", str(i["item_nbr"])) for i in cat["items"]]
        end = cat["state_end_date"]
        first_day = (pd.Timestamp(end) + pd.Timedelta(days=1)).date().isoformat()
        status = (
            f"**Agent:** {self.agent.url} · device `{cat['device_id']}` · sales known until {end}, "
            f"forecasts up to {cat['horizon_days']} days after · " + _model_md(cat["model"], "Live model")
        )
        if cat.get("candidate"):
            status += " · " + _model_md(cat["candidate"], f"Candidate ({cat['candidate'].get('mode')})")
        return (
            gr.update(choices=stores, value=stores[0][1] if stores else None),
            gr.update(choices=items, value=items[0][1] if items else None),
            status,
            first_day,
        )

    # -- forecast ---------------------------------------------------------------------------
    def predict(self, date: str, store: Any, item: Any, promo: bool) -> tuple[Any, ...]:
        """→ forecast, candidate, model, history plot, date error, store error, item error, last."""
        row = _row(date, store, item, promo)
        empty = pd.DataFrame({"date": pd.to_datetime([]), "units": [], "series": []})
        try:
            answer = self.agent.predict(row)
        except AgentError as exc:
            per, rest = _field_errors(exc)
            return (
                _err(rest) if rest else "", "", "", empty,
                _err(per.get("date", "")), _err(per.get("store_nbr", "")), _err(per.get("item_nbr", "")), {},
            )  # fmt: skip
        forecast = answer["predictions"][0]
        model = answer["model"]
        cand_md = self._side_by_side(row, forecast, model)
        plot = empty
        try:
            h = self.agent.history(row["store_nbr"], row["item_nbr"], 28)
            days, units = self._forecast_days(row, h["end_date"], forecast)
            plot = pd.DataFrame(
                {
                    "date": pd.to_datetime(h["dates"] + h["dates"][-1:] + days),
                    "units": h["unit_sales"] + h["unit_sales"][-1:] + units,
                    "series": ["actual sales (lag state)"] * len(h["dates"]) + ["forecast"] * (1 + len(days)),
                }
            )
        except AgentError as exc:
            logger.info("no history: %s", exc.message)
        last = {"request": row, "forecast": forecast, "model": model}
        return (
            f"## {forecast:.2f} units\nforecast for item {row['item_nbr']} at store {row['store_nbr']} on {row['date']}"
            + (" (on promotion)" if row["onpromotion"] else ""),
            cand_md, _model_md(model, "Answered by"), plot, "", "", "", last,
        )  # fmt: skip

    def _forecast_days(self, row: dict[str, Any], end: str, forecast: float) -> tuple[list[str], list[float]]:
        """Every day from the lag state's end to the asked day, forecast in one request (the asked day's
        value is the answer shown above); only that day if the agent refuses the others."""
        first = dt.date.fromisoformat(end) + dt.timedelta(days=1)
        n = (dt.date.fromisoformat(row["date"]) - first).days + 1
        days = [(first + dt.timedelta(days=k)).isoformat() for k in range(max(n, 1))]
        if len(days) <= 1:
            return [row["date"]], [forecast]
        try:
            preds = self.agent.predict_rows([{**row, "date": d} for d in days[:-1]])["predictions"]
        except AgentError as exc:
            logger.info("forecast days before %s: %s", row["date"], exc.message)
            return [row["date"]], [forecast]
        return days, [*preds, forecast]

    def _side_by_side(self, row: dict[str, Any], forecast: float, model: dict[str, Any]) -> str:
        """With a shadow / A-B candidate: both models' forecasts, and which arm answered; else ""."""
        try:
            cand = self.agent.candidate(row)
        except AgentError as exc:
            return "" if exc.code == "no_candidate" else f"candidate: ⚠ {exc.message}"
        c_pred, c_model = cand["predictions"][0], cand["model"]
        arm = "candidate" if model["digest"] == c_model["digest"] and model["version"] == c_model["version"] else "live"
        if arm == "live":
            l_pred, l_model = forecast, model
        else:  # an A/B split sent this row to the candidate: ask the live model on its own
            try:
                live = self.agent.live(row)
                l_pred, l_model = live["predictions"][0], live["model"]
            except AgentError as exc:
                l_pred, l_model = None, {**model, "name": f"⚠ {exc.message}"}
        mode = cand.get("mode") or "shadow"
        share = cand.get("share")
        how = f"{mode}, {share:.0%} of traffic" if isinstance(share, (int, float)) else mode
        live_txt = f"{l_pred:.2f} units" if l_pred is not None else "n/a"
        return (
            f"| | forecast | model |\n|---|---:|---|\n"
            f"| **live**{' ← answered' if arm == 'live' else ''} | {live_txt} | `{l_model['name']}` v{l_model['version']} "
            f"· `{l_model['variant']}` · `{l_model['digest'][:12]}…` |\n"
            f"| **candidate** ({how}){' ← answered' if arm == 'candidate' else ''} | {c_pred:.2f} units | "
            f"`{c_model['name']}` v{c_model['version']} · `{c_model['variant']}` · `{c_model['digest'][:12]}…` |"
        )

    # -- explanation ------------------------------------------------------------------------
    def explain(self, date: str, store: Any, item: Any, promo: bool) -> tuple[Any, str]:
        row = _row(date, store, item, promo)
        try:
            e = self.agent.explain(row)
        except AgentError as exc:
            per, rest = _field_errors(exc)
            text = "; ".join(f"{k}: {v}" for k, v in per.items()) or rest
            return pd.DataFrame({"feature": [], "contribution": []}), f"⚠ {text}"
        contrib = sorted(e["contributions"], key=lambda c: -abs(c["contribution"]))
        df = pd.DataFrame({"feature": [c["feature"] for c in contrib], "contribution": [c["contribution"] for c in contrib]})
        total = sum(c["contribution"] for c in contrib)
        md = (
            f"Forecast {e['prediction']:.3f} = baseline {e['baseline_prediction']:.3f} + contributions {total:+.3f} "
            f"({e['method']}, {e['permutations']} orders; baseline: {e['baseline']}). " + _model_md(e["model"], "Explained on")
        )
        return df, md

    # -- feedback ---------------------------------------------------------------------------
    def feedback(
        self, date: str, store: Any, item: Any, promo: bool, verdict: str, actual: Any, comment: str, validator: str,
        last: dict[str, Any] | None = None,
    ) -> str:  # fmt: skip
        row = _row(date, store, item, promo)
        if not (validator or "").strip():
            return _err("validator: enter your name first (rule required)")
        if verdict not in ("right", "wrong"):
            return _err("verdict: choose right or wrong (rule required)")
        if last and last.get("request") == row:
            forecast, model = last["forecast"], last["model"]
        else:  # API callers (gradio_client) have no session: ask the live model now
            try:
                answer = self.agent.predict(row)
            except AgentError as exc:
                per, rest = _field_errors(exc)
                return _err("; ".join(f"{k}: {v}" for k, v in per.items()) or rest)
            forecast, model = answer["predictions"][0], answer["model"]
        body = {
            "validator": validator.strip(), "verdict": verdict, "comment": comment or "", "request": row,
            "forecast": forecast, "model": model,
            "actual_units": None if actual in (None, "") else float(actual),
        }  # fmt: skip
        try:
            ack = self.agent.feedback(body)
        except AgentError as exc:
            if exc.code.startswith("disk_"):  # not stored on the device: say so, the form stays filled in
                return _err(exc.message)
            _, rest = _field_errors(exc)
            per = "; ".join(d.get("message", "") for d in exc.details)
            return _err(per or rest)
        return f"✔ feedback `{ack['id']}` stored on the device; lag state: {ack['lag_state']}"

    # -- batch ------------------------------------------------------------------------------
    def batch(self, upload: Any) -> tuple[Any, Any, str]:
        if upload is None:
            return None, None, _err("file: upload a CSV with date,store_nbr,item_nbr[,onpromotion] (rule required)")
        path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
        try:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                raw = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return None, None, _err(f"file: cannot read it as CSV: {exc}")
        if not raw:
            return None, None, _err("file: has no rows (rule non_empty)")
        rows = [_row(r.get("date", ""), r.get("store_nbr"), r.get("item_nbr"),
                     str(r.get("onpromotion", "")).strip().lower() in ("1", "true", "yes")) for r in raw]  # fmt: skip
        try:
            answer = self.agent.predict_batch(rows)
            preds, errors = answer["predictions"], answer["errors"]
        except AgentError as exc:
            if exc.status != 422:
                return None, None, _err(exc.message)
            preds = [None] * len(rows)
            errors = [{"index": int(d["field"][10:].split("]")[0]), **d} for d in exc.details if d["field"].startswith("instances[")]
        per_row: dict[int, list[str]] = {}
        for e in errors:  # "instances[3].store_nbr: unknown store 99 …" → "store_nbr: unknown store 99 …"
            per_row.setdefault(e["index"], []).append(e["message"].replace(f"instances[{e['index']}].", ""))
        df = pd.DataFrame(rows)
        df["prediction"] = preds
        df["error"] = ["; ".join(per_row.get(i, [])) for i in range(len(rows))]
        out = Path(tempfile.mkdtemp(prefix="edgeship-batch-")) / "forecasts.csv"
        df.to_csv(out, index=False)
        n_bad = sum(1 for i in range(len(rows)) if per_row.get(i))
        return df, str(out), f"{len(rows) - n_bad} rows forecast, {n_bad} with errors"


_CSS = ".field-error { color: #b91c1c; font-weight: 600; } #forecast h2 { margin: 0; }"


def build(agent_url: str, *, token: str | None = None, validator: str = "") -> gr.Blocks:
    """The Blocks app for the agent at ``agent_url`` (not launched)."""
    app = _App(AgentClient(agent_url, token=token), validator)
    with gr.Blocks(title="edgeship · field validation", analytics_enabled=False) as demo:
        gr.Markdown("# Sales forecast · field validation")
        status = gr.Markdown(f"**Agent:** {agent_url}", elem_id="status")
        last = gr.State({})
        with gr.Tab("Forecast"):
            with gr.Row():
                with gr.Column(scale=1):
                    date = gr.Textbox(label="Date (YYYY-MM-DD)", elem_id="date")
                    date_err = gr.Markdown(elem_id="date-error")
                    store = gr.Dropdown(label="Store", choices=[], allow_custom_value=True, elem_id="store")
                    store_err = gr.Markdown(elem_id="store-error")
                    item = gr.Dropdown(label="Product (item · family / class)", choices=[], allow_custom_value=True, elem_id="item")
                    item_err = gr.Markdown(elem_id="item-error")
                    promo = gr.Checkbox(label="On promotion", elem_id="promo")
                    go = gr.Button("Forecast", variant="primary", elem_id="predict-btn")
                with gr.Column(scale=2):
                    forecast = gr.Markdown(elem_id="forecast")
                    candidate = gr.Markdown(elem_id="candidate")
                    model = gr.Markdown(elem_id="model")
                    plot = gr.LinePlot(x="date", y="units", color="series", title="Daily sales (lag state) and the forecast",
                                       elem_id="history")  # fmt: skip
            with gr.Accordion("Why this forecast? (explanation on the edge model)", open=False, elem_id="explain-panel"):
                explain_btn = gr.Button("Explain", elem_id="explain-btn")
                bars = gr.BarPlot(x="feature", y="contribution", title="Feature contributions (units)", sort="-y", x_label_angle=-40,
                                  elem_id="explain-plot")  # fmt: skip
                explain_md = gr.Markdown(elem_id="explain-text")
            with gr.Group():
                gr.Markdown("### Was this forecast right?")
                with gr.Row():
                    verdict = gr.Radio(["right", "wrong"], label="Verdict", elem_id="verdict")
                    actual = gr.Number(label="Actual units (if known)", minimum=0, elem_id="actual")
                    validator_box = gr.Textbox(label="Validator", value=validator, elem_id="validator")
                comment = gr.Textbox(label="Comment", lines=2, elem_id="comment")
                send = gr.Button("Send feedback", elem_id="feedback-btn")
                feedback_md = gr.Markdown(elem_id="feedback-result")
        with gr.Tab("Batch CSV"):
            gr.Markdown("Upload rows `date,store_nbr,item_nbr,onpromotion`; get forecasts and per-row errors back.")
            upload = gr.File(label="CSV file", file_types=[".csv"], elem_id="batch-upload")
            run = gr.Button("Forecast all rows", elem_id="batch-btn")
            batch_md = gr.Markdown(elem_id="batch-result")
            table = gr.Dataframe(label="Forecasts", interactive=False)
            download = gr.File(label="Download", elem_id="batch-download")

        form = [date, store, item, promo]
        # each event's own limit here rather than demo.queue(default_concurrency_limit=…): queue() rebuilds
        # the whole FastAPI app once more (about a second of start on a Pi)
        lim = {"concurrency_limit": _CONCURRENCY}
        demo.load(app.choices, outputs=[store, item, status, date], api_name=False, **lim)
        go.click(app.predict, inputs=form, outputs=[forecast, candidate, model, plot, date_err, store_err, item_err, last],
                 api_name="predict", **lim)  # fmt: skip
        explain_btn.click(app.explain, inputs=form, outputs=[bars, explain_md], api_name="explain", **lim)
        send.click(app.feedback, inputs=[*form, verdict, actual, comment, validator_box, last], outputs=[feedback_md],
                   api_name="feedback", **lim)  # fmt: skip
        run.click(app.batch, inputs=[upload], outputs=[table, download, batch_md], api_name="predict_batch", **lim)
    return demo


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(
    agent_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    token: str | None = None,
    auth: list[tuple[str, str]] | None = None,
    validator: str = "",
    block: bool = False,
) -> tuple[gr.Blocks, str]:
    """Build and serve the app; returns ``(blocks, url)`` (``block=True`` serves until interrupted)."""
    demo = build(agent_url, token=token, validator=validator)
    port = port or _free_port(host)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        auth_message="Staff login (edgeship validation app)",
        prevent_thread_lock=True,
        show_error=True,
        share=False,
        ssr_mode=False,
        quiet=True,
        theme=theme(),
        css=_CSS,
        footer_links=["api"],
    )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(f"validation app: {url} (agent {agent_url})", flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    return demo, url
