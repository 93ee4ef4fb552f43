"""An evaluation record (``inspect/evaluate.py``) as one HTML page: the test-set table with 95%
intervals, the confusion matrix, ROC curves with the operating point chosen on validation, a
reliability diagram and per-grade calibration, the checklist judged on the test set, and a
gallery of the misclassified severe NPDR and PDR images (thumbnails embedded: one file)."""

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
        behind = f"; interval on its {e['patients']} patients" if e.get("patients") else ""
        text += f" [{e['successes']}/{e['n']}{behind}]"
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


def confusion_figure(record: dict[str, Any]) -> go.Figure:
    """The test confusion matrix: counts, coloured by each true grade's share (a row sums to
    100%), so a rare grade's misses show as plainly as a common one's."""
    cm = record["test"]["metrics"]["confusion_matrix"]
    names = [f"{g} {GRADES[g]}" for g in range(len(cm))]
    shares = [[c / max(sum(row), 1) for c in row] for row in cm]
    text = [
        [f"{c}<br>{share:.0%}" for c, share in zip(row, srow, strict=True)]
        for row, srow in zip(cm, shares, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=shares, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
            zmin=0, zmax=1, colorbar={"title": "share of<br>true grade"},
            hovertemplate="true %{y}, called %{x}: %{text}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_layout(title="Confusion matrix on test (count, share of the true grade)",
                      height=480, template="plotly_white")  # fmt: skip
    fig.update_xaxes(title_text="predicted grade")
    fig.update_yaxes(title_text="true grade", autorange="reversed")
    return fig


def grade_calibration_figure(record: dict[str, Any]) -> go.Figure:
    """Per grade, P(grade = g) against how often the grade is g, on test."""
    fig = go.Figure()
    for c in record["test"].get("calibration_per_grade", []):
        bins = c["bins"]
        fig.add_trace(
            go.Scatter(
                x=[b["predicted"] for b in bins], y=[b["observed"] for b in bins],
                mode="lines+markers", name=f"grade {c['grade']} ({c['n']} images), "
                f"error {c['ece']:.3f}", customdata=[b["n"] for b in bins],
                hovertemplate="predicted %{x:.2f}: observed %{y:.2f} over %{customdata} images",
            )
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="calibrated")
    )
    fig.update_layout(title="Per-grade calibration on test (one grade against the rest)",
                      height=420, template="plotly_white")  # fmt: skip
    fig.update_xaxes(title_text="predicted P(grade = g)", range=[0, 1])
    fig.update_yaxes(title_text="observed share of grade g", range=[0, 1])
    return fig


#: At most this many thumbnails in the gallery (the JSON lists every miss).
GALLERY_MAX = 60
THUMBNAIL_PX = 160


def thumbnail(path: str) -> str | None:
    """A small JPEG of the image file as a data URI (the page stays one file), or None when
    the file cannot be read (``data/decode.py``: regular files within its size limits)."""
    import base64

    import cv2

    from drsearch.data.decode import ImageError, decoded

    try:
        with decoded(path) as rgb:
            scale = THUMBNAIL_PX / max(rgb.shape[:2])
            img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            if scale < 1:
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    except ImageError:
        return None
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else None


def gallery(record: dict[str, Any]) -> str:
    """The misclassified severe NPDR and PDR test images, most dangerous first."""
    misses = record["test"].get("severe_misses")
    if misses is None:
        return ""
    counts = record["test"]["grade_counts"]
    n_severe = sum(counts[g] for g in (3, 4))
    head = (
        f"<p>{len(misses)} of the {n_severe} test images of grade 3 (severe NPDR) or 4 (PDR) "
        "were given another grade; the most dangerous first (PDR before severe NPDR, then the "
        "lowest probability of referable DR). A red border: not referred at the operating "
        "point.</p>"
    )
    if len(misses) > GALLERY_MAX:
        head += f"<p>Showing the first {GALLERY_MAX}; the JSON lists all {len(misses)}.</p>"
    cards = []
    for m in misses[:GALLERY_MAX]:
        uri = thumbnail(m["path"])
        image = (
            f"<img src='{uri}' alt='{html.escape(m['id'])}'>"
            if uri
            else f"<div class='missing'>image not found at {html.escape(m['path'])}</div>"
        )
        referred = m.get("referable_call", m["pred"] >= 2)
        cards.append(
            f"<figure class='{'' if referred else 'missed'}'>{image}<figcaption>"
            f"<b>{html.escape(m['id'])}</b><br>true {m['label']} ({GRADES[m['label']]}), "
            f"called {m['pred']} ({GRADES[m['pred']]})<br>P(true) {m['p_label']:.2f}, "
            f"P(called) {m['p_pred']:.2f}<br>P(referable) {m['p_referable']:.2f}"
            f"{'' if referred else ': not referred'}</figcaption></figure>"
        )
    return head + f"<div class='gallery'>{''.join(cards)}</div>"


def check_row(c: dict[str, Any]) -> str:
    """One checklist line of a record: its figure as the checklist shows it (``9.0 points``)."""
    shown = c.get("shown") or ("n/a" if c["observed"] is None else format(c["observed"], ".3f"))
    return (
        f"<tr class='{c['result']}'><td>{html.escape(c['name'])}</td><td>{html.escape(shown)}"
        f"</td><td>{html.escape(c['threshold'])}</td><td>{c['result'].upper()}</td>"
        f"<td>{html.escape(c['detail'])}</td></tr>"
    )


def write_evaluation_page(record: dict[str, Any], path: Path, title: str) -> None:
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{b}</td><td class='val'>{c}</td></tr>"
        for a, b, c in table_rows(record)
    )
    figures, js = [], True
    drawn = [
        confusion_figure(record),
        *(roc_figure(record, e) for e in ENDPOINTS),
        reliability_figure(record),
        grade_calibration_figure(record),
    ]
    for n, fig in enumerate(drawn):
        figures.append(fig.to_html(full_html=False, include_plotlyjs=js, div_id=f"fig-{n}"))
        js = False
    checks, training = (
        "".join(check_row(c) for c in record.get(key, []))
        for key in ("checklist", "training_checklist")
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
.gallery {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.gallery figure {{ margin: 0; width: 170px; font-size: 12px; border: 3px solid #ddd; }}
.gallery figure.missed {{ border-color: #b00020; }} .gallery img {{ width: 100%; }}
.missing {{ height: 120px; color: #777; padding: 4px; }}
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
every patient has one image; a bootstrap of patients for every figure otherwise, and Wilson
on the patients behind a proportion every resample agrees on, such as 40/40).</p>
<section><h2>Figures</h2><table>
<tr><th>figure</th><th>test</th><th>validation (chose; optimistic)</th></tr>
{rows}</table></section>
<section><h2>Methods</h2><p>{html.escape(record.get("methods", ""))}</p></section>
<section><h2>Medical-grade checklist on the test set</h2><table>
<tr><th>criterion</th><th>observed</th><th>required</th><th>result</th><th>evidence</th></tr>
{checks}</table></section>
<section><h2>Training: judged on the validation epochs, not on the test set</h2><table>
<tr><th>criterion</th><th>observed</th><th>required</th><th>result</th><th>evidence</th></tr>
{training}</table></section>
<section><h2>Curves</h2>{"".join(figures)}</section>
<section><h2>Severe NPDR and PDR the model got wrong</h2>{gallery(record)}</section>
</body></html>
"""
    write_text_atomic(path, page)
