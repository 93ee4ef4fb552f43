"""Report records -> one self-contained HTML file with plotly figures (plotly.js embedded once).

kaleido cannot export images on these machines (it needs Chrome), so the report is HTML that
opens offline. Every section is a ``<section id=...>`` so tests and scripts can find it.
"""

from __future__ import annotations

import html
from pathlib import Path

import plotly.colors
import plotly.graph_objects as go

from drsearch.clinical import (
    GRADES,
    PDR_SENSITIVITY_MIN,
    SEVERE_NPDR_SENSITIVITY_MIN,
    SPECIFICITY_MIN,
)
from drsearch.fmt import num
from drsearch.inspect.report.records import ReportRecords, TrialRow
from drsearch.io import write_text_atomic

_GRADE_LABELS = [f"{i} {name.replace('_', ' ')}" for i, name in enumerate(GRADES)]
SECTIONS = (
    "history",
    "importances",
    "parallel",
    "curves",
    "grades",
    "confusion",
    "lr",
    "checklist",
    "compute",
)


def history_figure(r: ReportRecords) -> go.Figure:
    fig = go.Figure()
    for feasible, name, symbol in ((True, "feasible", "circle"), (False, "infeasible", "x")):
        pts = [h for h in r.history if h[3] == feasible]
        fig.add_scatter(
            x=[p[0] for p in pts],
            y=[p[1] for p in pts],
            mode="markers",
            name=f"{name} trials",
            marker={"symbol": symbol, "size": 9},
        )
    fig.add_scatter(
        x=[h[0] for h in r.history],
        y=[h[2] for h in r.history],
        mode="lines",
        name="best so far",
        line={"shape": "hv"},
    )
    return _layout(fig, "Optimization history", "trial", f"objective ({r.metric}, penalised)")


def importance_figure(r: ReportRecords) -> go.Figure:
    items = sorted(r.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h"))
    return _layout(fig, "Parameter importances (fANOVA)", "importance", "")


def parallel_figure(r: ReportRecords) -> go.Figure:
    rows = [t for t in r.trials if t.state == "COMPLETE" and t.value is not None]
    dims = []
    for p in r.parallel_params:
        values = [t.params[p] for t in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            dims.append({"label": p, "values": values})
        else:
            labels = sorted({str(v) for v in values})
            dims.append(
                {
                    "label": p,
                    "values": [labels.index(str(v)) for v in values],
                    "tickvals": list(range(len(labels))),
                    "ticktext": labels,
                }
            )
    dims.append({"label": "objective", "values": [t.value for t in rows]})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={"color": [t.value for t in rows], "colorscale": "Viridis", "showscale": True},
        )
    )
    return _layout(fig, "Parallel coordinates (complete trials)", "", "")


def curves_figure(r: ReportRecords) -> go.Figure:
    fig = go.Figure()
    for t in r.trials:
        if not t.curve:
            continue
        pruned = t.state == "PRUNED"
        fig.add_scatter(
            x=list(t.curve),
            y=list(t.curve.values()),
            mode="lines+markers",
            name=f"trial {t.number} ({t.state.lower()})",
            line={"dash": "dot" if pruned else "solid", "width": 1 if pruned else 2},
            marker={
                "symbol": ["circle"] * (len(t.curve) - 1) + ["x" if pruned else "circle"],
                "size": [4] * (len(t.curve) - 1) + [10 if pruned else 4],
            },
        )
    return _layout(
        fig,
        "Learning curves (pruning metric per epoch; pruned trials dotted, "
        "x where ASHA stopped them)",
        "epoch",
        "validation metric",
    )


def grades_figure(r: ReportRecords) -> go.Figure:
    fig = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for i, t in enumerate(r.top):
        for short, key in (("sens", "sensitivity"), ("spec", "specificity")):
            fig.add_bar(
                x=[f"{short} {g}" for g in _GRADE_LABELS],
                y=t.attrs.get(key) or [None] * 5,
                name=f"trial {t.number}",
                legendgroup=str(t.number),
                showlegend=short == "sens",
                marker_color=palette[i % len(palette)],
            )
    lines: dict[float, list[str]] = {}
    for y, what in (
        (SEVERE_NPDR_SENSITIVITY_MIN, "severe NPDR sens."),
        (SPECIFICITY_MIN, "every spec."),
        (PDR_SENSITIVITY_MIN, "PDR sens."),
    ):
        lines.setdefault(y, []).append(what)
    for y, whats in lines.items():
        fig.add_hline(y=y, line_dash="dash", annotation_text=f"{y:.2f}: {', '.join(whats)}")
    fig.update_layout(barmode="group", yaxis_range=[0, 1.05])
    return _layout(
        fig,
        "Per-grade sensitivity and specificity of the top trials against the "
        "medical-grade thresholds",
        "",
        "",
    )


def confusion_figure(r: ReportRecords) -> go.Figure:
    cm = (r.best.attrs.get("confusion_matrix") if r.best else None) or [[0] * 5] * 5
    fig = go.Figure(
        go.Heatmap(
            z=cm,
            x=_GRADE_LABELS,
            y=_GRADE_LABELS,
            colorscale="Blues",
            text=cm,
            texttemplate="%{text}",
        )
    )
    fig.update_yaxes(autorange="reversed")
    title = f"Confusion matrix of trial {r.best.number}" if r.best else "Confusion matrix"
    return _layout(fig, title, "predicted grade", "true grade")


def lr_figure(r: ReportRecords) -> go.Figure:
    fig = go.Figure()
    for group in sorted({p.group for p in r.best_lr}):
        pts = sorted(
            (p.epoch - (1 if p.where == "first" else 0), p.lr)
            for p in r.best_lr
            if p.group == group
        )
        fig.add_scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=group
        )
    fig.update_yaxes(type="log")
    title = f"LR per parameter group over training (trial {r.best.number})" if r.best else "LR"
    return _layout(fig, title, "epoch (start .. end)", "learning rate")


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=460,
        margin={"l": 60, "r": 30, "t": 60, "b": 50},
        template="plotly_white",
    )
    return fig


def write_report(r: ReportRecords, out_dir: Path) -> Path:
    """Write ``report.html`` (plotly.js embedded once, so it opens offline)."""
    figures: list[tuple[str, str, go.Figure | None]] = [
        ("history", "Optimization history", history_figure(r) if r.history else None),
        ("importances", "Parameter importances", importance_figure(r) if r.importances else None),
        (
            "parallel",
            "Parallel coordinates",
            parallel_figure(r) if r.history and r.parallel_params else None,
        ),
        ("curves", "Learning curves", curves_figure(r)),
        ("grades", "Per-grade sensitivity and specificity", grades_figure(r) if r.top else None),
        ("confusion", "Best trial: confusion matrix", confusion_figure(r) if r.best else None),
        ("lr", "Best trial: LR per parameter group", lr_figure(r) if r.best_lr else None),
    ]
    parts, js_done = [], False
    for key, title, fig in figures:
        if fig is None:
            body = "<p class='empty'>Not enough complete trials for this section yet.</p>"
        else:
            body = fig.to_html(full_html=False, include_plotlyjs=not js_done, div_id=f"fig-{key}")
            js_done = True
        parts.append(f"<section id='{key}'><h2>{html.escape(title)}</h2>{body}</section>")
    parts.append(_checklist_html(r))
    parts.append(_compute_html(r))
    path = out_dir / "report.html"
    write_text_atomic(path, _page(r, "\n".join(parts)))
    return path


def _checklist_html(r: ReportRecords) -> str:
    if r.best is None:
        return "<section id='checklist'><h2>Medical-grade checklist</h2><p>No trial.</p></section>"
    rows = "".join(
        f"<tr class='{'pass' if c.passed else 'fail'}'><td>{html.escape(c.name)}</td>"
        f"<td>{num(c.observed)}</td><td>{html.escape(c.threshold)}</td>"
        f"<td>{num(c.wilson_lower)}</td><td>{'PASS' if c.passed else 'FAIL'}</td>"
        f"<td>{html.escape(c.detail)}</td></tr>"
        for c in r.checklist
    )
    kind = "best feasible" if r.best_feasible else "best (infeasible)"
    return (
        f"<section id='checklist'><h2>Medical-grade checklist: {kind} trial "
        f"{r.best.number}</h2><table><tr><th>criterion</th><th>observed</th>"
        f"<th>required</th><th>Wilson 95% lower bound</th><th>result</th><th>evidence</th>"
        f"</tr>{rows}</table></section>"
    )


def _compute_html(r: ReportRecords) -> str:
    c = r.compute
    states: dict[str, int] = {}
    for t in r.trials:
        states[t.state] = states.get(t.state, 0) + 1
    cost = (
        "no price set (report.gpu_hour_price)"
        if c.cost is None
        else (f"{c.cost:.2f} {html.escape(c.currency)}")
    )
    rows = [
        ("trials", ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))),
        ("trial hours (wall time of every trial)", f"{c.trial_hours:.3f}"),
        ("of which in pruned trials", f"{c.pruned_hours:.3f}"),
        ("hours saved by pruning (estimated epochs not run)", f"{c.saved_hours:.3f}"),
        ("GPU hours", f"{c.gpu_hours:.3f}"),
        ("cost", cost),
    ]
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<section id='compute'><h2>Compute spent</h2><table>{body}</table></section>"


def _best_line(r: ReportRecords) -> str:
    if r.best is None:
        return "No complete trial yet."
    t: TrialRow = r.best
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
    )
    kind = "feasible" if r.best_feasible else "infeasible"
    return f"Best ({kind}) trial {t.number}: value {t.value:.4f}; {html.escape(params)}"


def _page(r: ReportRecords, body: str) -> str:
    constraints = ", ".join(f"{c['metric']} &gt;= {c['min']}" for c in r.constraints) or "none"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.notes)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>drsearch report: {html.escape(r.study)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
tr.pass td:nth-child(5) {{ color: #0a7d2c; font-weight: bold; }}
tr.fail td:nth-child(5) {{ color: #b00020; font-weight: bold; }}
section {{ margin-top: 2em; }} .empty {{ color: #777; }}
</style></head><body>
<h1>Study {html.escape(r.study)}</h1>
<p>Objective: {html.escape(r.metric)} on the best epoch; study constraints: {constraints}.</p>
<p>{_best_line(r)}</p>
<ul>{notes}</ul>
{body}
</body></html>
"""
