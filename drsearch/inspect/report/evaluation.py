"""An evaluation record (``inspect/evaluate.py``) as one HTML page: the test-set table with 95%
intervals, ROC curves with the operating point chosen on validation, a reliability diagram and
the checklist judged on the test set."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from drsearch.clinical import ENDPOINTS, GRADES
from drsearch.io import write_text_atomic


def interval(e: dict[str, Any] | None) -> str:
    """``0.912 (0.871-0.941)``, with ``k/n`` for a proportion; ``n/a`` when undefined."""
    if not e or e.get("value") is None:
        return "n/a" + (f" (0/{e['n']})" if e and e.get("n") == 0 else "")
    text = f"{e['value']:.3f}"
    if e.get("low") is not None:
        text += f" ({e['low']:.3f}-{e['high']:.3f})"
    if e.get("n") is not None:
        text += f" [{e['successes']}/{e['n']}]"
    return text


def table_rows(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, test, validation) rows of the headline table."""
    t, v = record["test"], record["validation"]
    rows = [
        ("accuracy", interval(t["accuracy"]), interval(v["accuracy"])),
        ("quadratic weighted kappa", interval(t["qwk"]), interval(v["qwk"])),
    ]
    for name, k in ENDPOINTS.items():
        te, ve = t["endpoints"][name], v["endpoints"][name]
        label = name.replace("_", "-")
        rows.append((f"{label} (grade >= {k}) AUC", interval(te["auc"]), interval(ve["auc"])))
        for what in ("sensitivity", "specificity"):
            rows.append(
                (
                    f"{label} {what} at the operating point",
                    interval(te["at_operating_point"][what]),
                    interval(ve["at_operating_point"][what]),
                )
            )
    for g, name in enumerate(GRADES):
        tg, vg = t["per_grade"][g], v["per_grade"][g]
        for what in ("sensitivity", "specificity"):
            rows.append((f"grade {g} ({name}) {what}", interval(tg[what]), interval(vg[what])))
    rows.append(
        (
            "expected calibration error",
            f"{t['calibration']['ece']:.3f}",
            f"{v['calibration']['ece']:.3f}",
        )
    )
    return rows


def roc_figure(record: dict[str, Any], name: str) -> go.Figure:
    e = record["test"]["endpoints"][name]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=e["roc"]["fpr"], y=e["roc"]["tpr"], mode="lines", name="test ROC"))
    op = e["at_operating_point"]
    if op["sensitivity"].get("value") is not None and op["specificity"].get("value") is not None:
        threshold = record["operating_points"][name]["threshold"]
        fig.add_trace(
            go.Scatter(
                x=[1 - op["specificity"]["value"]],
                y=[op["sensitivity"]["value"]],
                mode="markers",
                marker={"size": 12, "symbol": "x"},
                name=f"operating point (threshold {threshold:.4f}, chosen on validation)",
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="chance"))
    title = f"{name.replace('_', '-')} DR (grade >= {ENDPOINTS[name]}): test ROC"
    fig.update_layout(title=title, height=420, template="plotly_white")
    fig.update_xaxes(title_text="1 - specificity", range=[0, 1])
    fig.update_yaxes(title_text="sensitivity", range=[0, 1.02])
    return fig


def reliability_figure(record: dict[str, Any]) -> go.Figure:
    bins = record["test"]["calibration"]["bins"]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[(b["low"] + b["high"]) / 2 for b in bins],
            y=[b["accuracy"] for b in bins],
            width=[b["high"] - b["low"] for b in bins],
            name="accuracy in bin",
            customdata=[b["n"] for b in bins],
            hovertemplate="confidence %{x:.2f}: accuracy %{y:.3f} over %{customdata} images",
        )
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="calibrated")
    )
    ece = record["test"]["calibration"]["ece"]
    fig.update_layout(
        title=f"Reliability on test (top-grade confidence), ECE {ece:.3f}",
        height=420,
        template="plotly_white",
    )
    fig.update_xaxes(title_text="confidence", range=[0, 1])
    fig.update_yaxes(title_text="accuracy", range=[0, 1])
    return fig


def write_evaluation_page(record: dict[str, Any], path: Path, title: str) -> None:
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{b}</td><td class='val'>{c}</td></tr>"
        for a, b, c in table_rows(record)
    )
    figures, js = [], True
    drawn = [*(roc_figure(record, e) for e in ENDPOINTS), reliability_figure(record)]
    for n, fig in enumerate(drawn):
        figures.append(fig.to_html(full_html=False, include_plotlyjs=js, div_id=f"fig-{n}"))
        js = False
    checks = "".join(
        f"<tr class='{c['result']}'><td>{html.escape(c['name'])}</td>"
        f"<td>{'n/a' if c['observed'] is None else format(c['observed'], '.3f')}</td>"
        f"<td>{html.escape(c['threshold'])}</td><td>{c['result'].upper()}</td>"
        f"<td>{html.escape(c['detail'])}</td></tr>"
        for c in record["checklist"]
    )
    what, data = record["what"], record["data"]
    ensemble = " (ensemble: mean of per-grade probabilities)" if what["ensemble"] else ""
    ops = "; ".join(
        f"{name}: P(grade >= {o['grade_at_least']}) >= {o['threshold']:.4f}"
        for name, o in record["operating_points"].items()
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
td.val {{ color: #777; }} tr.pass td:nth-child(4) {{ color: #0a7d2c; font-weight: bold; }}
tr.fail td:nth-child(4) {{ color: #b00020; font-weight: bold; }} section {{ margin-top: 2em; }}
tr.inconclusive td:nth-child(4) {{ color: #a36b00; font-weight: bold; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Models: {html.escape(", ".join(what["models"]))}{ensemble};
views averaged: {html.escape(", ".join(what["views"]))}; temperature scaling:
{"on" if what["temperature_scaling"] else "off"}.</p>
<p>Held-out test set: {data["n_test"]} images of {data.get("n_test_patients", "?")} patients
(fingerprint {data["test_sha256"][:12]}), never seen by the search. Validation ({data["n_val"]}
images) chose the operating points ({html.escape(ops)}) and any thresholds or temperature; the
test figures are measured once with them frozen. Intervals: 95%,
{html.escape(record["test"].get("interval_method", "Wilson / stratified bootstrap"))}
(Wilson for proportions [successes/n] and a grade-stratified bootstrap for AUC and kappa when
every patient has one image; a bootstrap of patients for every figure otherwise).</p>
<section><h2>Figures</h2><table>
<tr><th>figure</th><th>test</th><th>validation (chose; optimistic)</th></tr>
{rows}</table></section>
<section><h2>Methods</h2><p>{html.escape(record.get("methods", ""))}</p></section>
<section><h2>Medical-grade checklist on the test set</h2><table>
<tr><th>criterion</th><th>observed</th><th>required</th><th>result</th><th>evidence</th></tr>
{checks}</table></section>
<section><h2>Curves</h2>{"".join(figures)}</section>
</body></html>
"""
    write_text_atomic(path, page)
