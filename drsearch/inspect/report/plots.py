"""Report records -> one self-contained HTML file with plotly figures (plotly.js embedded once).

Optuna's own figures (``optuna.visualization``) show what they were made for: the
optimisation history, fANOVA importances, parallel coordinates, slices and the learning
curves (intermediate values). drsearch draws what they cannot: the study's constraints per
trial, per-grade sensitivity and specificity against the medical-grade thresholds, the best
trial's confusion matrix and the LR every parameter group really got. kaleido cannot export
images on these machines (it needs Chrome), so the report is HTML that opens offline. Every
section is a ``<section id=...>`` and every figure a ``<div id='fig-...'>``, so tests and
scripts can find them.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import plotly.colors
import plotly.graph_objects as go

from drsearch.clinical import (
    GRADES,
    PDR_SENSITIVITY_MIN,
    SEVERE_NPDR_SENSITIVITY_MIN,
    SPECIFICITY_MIN,
)
from drsearch.fmt import num
from drsearch.inspect.report.records import (
    MIN_IMPORTANCE_TRIALS,
    ReportRecords,
    TrialRow,
    importance_evaluator,
)
from drsearch.io import write_text_atomic

_GRADE_LABELS = [f"{i} {name.replace('_', ' ')}" for i, name in enumerate(GRADES)]
_PALETTE = plotly.colors.qualitative.Dark24  # 24 distinct colours before any repeats
SECTIONS = (
    "history",
    "importances",
    "parallel",
    "slices",
    "curves",
    "constraints",
    "grades",
    "confusion",
    "lr",
    "checklist",
    "evaluation",
    "compute",
)


def _objective_name(r: ReportRecords) -> str:
    return f"objective ({r.metric}, penalised when infeasible)"


def _complete(r: ReportRecords) -> list[TrialRow]:
    return [t for t in r.trials if t.state == "COMPLETE" and t.value is not None]


# -- Optuna's figures ----------------------------------------------------------------------
def history_figure(r: ReportRecords, study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study, target_name=_objective_name(r))
    return _layout(fig, "Optimization history (complete trials; infeasible in grey)")


def importance_figure(r: ReportRecords, study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_param_importances(
        study, evaluator=importance_evaluator(), params=list(r.importances)
    )
    n = len(_complete(r))
    return _layout(fig, f"Parameter importances (fANOVA on {n} complete trials)")


def parallel_figure(r: ReportRecords, study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_parallel_coordinate(
        study, params=r.parallel_params, target_name="objective"
    )
    # Optuna 5 draws the axes as x ticks: long dotted names (loss.focal.gamma) overlap when
    # level, so tilt them and leave room below
    fig.update_xaxes(tickangle=-25)
    _layout(fig, "Parallel coordinates (complete trials)")
    return fig.update_layout(height=520, margin={"t": 90, "l": 70, "r": 30, "b": 110})


SLICES_PER_ROW = 4


def slice_figures(r: ReportRecords, study: optuna.Study) -> list[go.Figure]:
    """Optuna's slice plots, four parameters a row (Optuna makes one row 300 px a parameter
    wide, which runs off the page for a real search space)."""
    params = r.parallel_params
    rows = [params[i : i + SLICES_PER_ROW] for i in range(0, len(params), SLICES_PER_ROW)]
    figures = []
    for i, row in enumerate(rows):
        fig = optuna.visualization.plot_slice(study, params=row, target_name="objective")
        part = f" ({i + 1} of {len(rows)})" if len(rows) > 1 else ""
        _layout(fig, f"Objective against each parameter, complete trials{part}")
        figures.append(fig.update_layout(width=None, autosize=True, height=380))
    return figures


def curves_figure(r: ReportRecords, study: optuna.Study) -> go.Figure:
    """Optuna's intermediate values, one distinct colour per trial (pruned: dotted, and an x
    where ASHA stopped it), with the legend naming trial and state."""
    fig = optuna.visualization.plot_intermediate_values(study)
    rows = {t.number: t for t in r.trials}
    for i, trace in enumerate(fig.data):
        number = int(str(trace.name).removeprefix("Trial"))
        row = rows.get(number)
        state = row.state.lower() if row else "running"
        pruned = state == "pruned"
        n = len(trace.x or ())
        trace.update(
            name=f"trial {number} ({state})",
            line={"color": _PALETTE[i % len(_PALETTE)], "dash": "dot" if pruned else "solid"},
            marker={
                "color": _PALETTE[i % len(_PALETTE)],
                "symbol": ["circle"] * (n - 1) + ["x" if pruned else "circle"],
                "size": [5] * (n - 1) + [11 if pruned else 5],
                "maxdisplayed": 0,
            },
        )
    fig.update_layout(showlegend=True)
    return _layout(
        fig,
        "Learning curves: the best pruning metric so far, as ASHA compares it (pruned trials "
        "dotted, x where ASHA stopped them)",
        "epoch",
        f"validation {r.pruning_metric}, best so far",
    )


# -- drsearch's own figures ----------------------------------------------------------------
def constraints_figure(r: ReportRecords) -> go.Figure:
    """Each constraint's metric on every trained trial's best epoch, against its minimum."""
    fig = go.Figure()
    trained = [t for t in r.trials if t.state in ("COMPLETE", "PRUNED")]
    for i, c in enumerate(r.constraints):
        colour = _PALETTE[i % len(_PALETTE)]
        pts = [(t.number, t.attrs.get(c["metric"]), t.state) for t in trained]
        pts = [p for p in pts if p[1] is not None]
        fig.add_scatter(
            x=[p[0] for p in pts],
            y=[p[1] for p in pts],
            mode="markers",
            name=c["metric"],
            legendgroup=c["metric"],
            marker={
                "color": colour,
                "size": 10,
                "symbol": ["circle" if p[2] == "COMPLETE" else "circle-open" for p in pts],
            },
            hovertemplate="trial %{x}: %{y:.3f}<extra>" + c["metric"] + "</extra>",
        )
        numbers = [t.number for t in trained] or [0]
        fig.add_scatter(
            x=[min(numbers) - 0.5, max(numbers) + 0.5],
            y=[c["min"], c["min"]],
            mode="lines",
            name=f"{c['metric']} >= {c['min']:g}",
            legendgroup=c["metric"],
            line={"color": colour, "dash": "dash"},
            hoverinfo="skip",
        )
    seen = [y for trace in fig.data for y in (trace.y or ()) if y is not None]
    fig.update_layout(yaxis_range=[max(0.0, min(seen, default=0.0) - 0.05), 1.02])
    return _layout(
        fig,
        "Study constraints per trial (best epoch; open circles: pruned trials)",
        "trial",
        "validation metric",
    )


def grades_figure(r: ReportRecords) -> go.Figure:
    fig = go.Figure()
    x = [f"sens {g}" for g in _GRADE_LABELS] + [f"spec {g}" for g in _GRADE_LABELS]
    for i, t in enumerate(r.top):
        y = list(t.attrs.get("sensitivity") or [None] * 5) + list(
            t.attrs.get("specificity") or [None] * 5
        )
        fig.add_bar(x=x, y=y, name=f"trial {t.number}", marker_color=_PALETTE[i % len(_PALETTE)])
    # each threshold drawn on the bars it applies to, named once in the legend (no labels
    # over the bars)
    for xs, y, what in (
        ([x[3]], SEVERE_NPDR_SENSITIVITY_MIN, "severe NPDR sensitivity"),
        ([x[4]], PDR_SENSITIVITY_MIN, "PDR sensitivity"),
        (x[5:], SPECIFICITY_MIN, "every specificity"),
    ):
        fig.add_scatter(
            x=xs,
            y=[y] * len(xs),
            mode="markers",
            name=f"medical grade: {what} >= {y:.2f}",
            marker={"symbol": "line-ew-open", "size": 56, "line": {"width": 3}, "color": "black"},
        )
    fig.update_layout(barmode="group", yaxis_range=[0, 1.05])
    return _layout(
        fig,
        "Per-grade sensitivity and specificity of the top trials (validation, best epoch)",
        "",
        "proportion",
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
    return _layout(fig, title + " (validation images)", "predicted grade", "true grade")


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
    fig.update_yaxes(type="log", dtick="D2", tickformat=".0e")  # 1e-4, 2e-4, 5e-4, 1e-3
    title = f"LR per parameter group over training (trial {r.best.number})" if r.best else "LR"
    return _layout(fig, title, "epoch (start .. end)", "learning rate")


def _layout(fig: go.Figure, title: str, x: str | None = None, y: str | None = None) -> go.Figure:
    fig.update_layout(
        title=title,
        height=460,
        margin={"l": 70, "r": 30, "t": 60, "b": 50},
        template="plotly_white",
    )
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


Figure = Callable[[], go.Figure | list[go.Figure]]


def _sections(r: ReportRecords, study: optuna.Study) -> list[tuple[str, str, Figure | str]]:
    """(id, title, figure maker or the reason there is no figure) in page order."""
    complete = len(_complete(r))
    few = f"Not enough complete trials for this section yet ({complete} so far)."
    compared = complete >= 2 and bool(r.parallel_params)
    if complete < MIN_IMPORTANCE_TRIALS:
        hidden = (
            f"fANOVA importances need at least {MIN_IMPORTANCE_TRIALS} complete trials to "
            f"mean anything; this study has {complete}."
        )
    else:
        hidden = "fANOVA found no importances (the complete trials do not differ enough)."
    none = "The study has no constraints, or no trained trial yet."
    table: list[tuple[str, str, bool, Figure, str]] = [
        ("history", "Optimization history", bool(r.history), lambda: history_figure(r, study), few),
        ("importances", "Parameter importances", bool(r.importances),
         lambda: importance_figure(r, study), hidden),
        ("parallel", "Parallel coordinates", compared, lambda: parallel_figure(r, study), few),
        ("slices", "Slices", compared, lambda: slice_figures(r, study), few),
        ("curves", "Learning curves", any(t.curve for t in r.trials),
         lambda: curves_figure(r, study), few),
        ("constraints", "Constraints", bool(r.constraints and r.best),
         lambda: constraints_figure(r), none),
        ("grades", "Per-grade sensitivity and specificity", bool(r.top),
         lambda: grades_figure(r), few),
        ("confusion", "Best trial: confusion matrix", r.best is not None,
         lambda: confusion_figure(r), few),
        ("lr", "Best trial: LR per parameter group", bool(r.best_lr), lambda: lr_figure(r), few),
    ]  # fmt: skip
    return [(key, title, make if drawn else why) for key, title, drawn, make, why in table]


def write_report(r: ReportRecords, study: optuna.Study, out_dir: Path) -> Path:
    """Write ``report.html`` (plotly.js embedded once, so it opens offline)."""
    parts, js_done = [], False
    for key, title, figure in _sections(r, study):
        if isinstance(figure, str):
            body = f"<p class='empty'>{html.escape(figure)}</p>"
        else:
            made = figure()
            bodies = []
            for n, fig in enumerate(made if isinstance(made, list) else [made]):
                div = f"fig-{key}" if n == 0 else f"fig-{key}-{n + 1}"
                bodies.append(
                    fig.to_html(full_html=False, include_plotlyjs=not js_done, div_id=div)
                )
                js_done = True
            body = "\n".join(bodies)
        parts.append(f"<section id='{key}'><h2>{html.escape(title)}</h2>{body}</section>")
    parts.append(_checklist_html(r))
    parts.append(_held_out_html(r))
    parts.append(_compute_html(r))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    write_text_atomic(path, _page(r, "\n".join(parts)))
    return path


def _finalists_html(record: dict[str, Any]) -> str:
    """The finalist stage: each finalist's search value beside its confirmed value."""
    plan = record["plan"]
    rows = "".join(
        f"<tr><td>{e['trial']}{' (crowned)' if e['trial'] == record['crowned'] else ''}</td>"
        f"<td>{num(e['search_value'])}</td><td>{num(e.get('confirmed_value'))}</td>"
        f"<td>{num(e.get('optimism_gap'))}</td>"
        f"<td>{ {True: 'yes', False: 'no', None: '-'}[e.get('feasible')] }</td>"
        f"<td>{html.escape(e.get('evidence', 'not confirmed'))}</td>"
        f"<td>{html.escape('; '.join(e.get('infeasible_reasons') or []))}</td></tr>"
        for e in record["finalists"]
    )
    crowned = record["crowned"]
    verdict = (
        f"The study's best is trial {crowned}, the best feasible confirmed finalist"
        if crowned is not None
        else "No finalist meets the constraints on its confirmation: no winner is named"
    )
    return (
        f"<p>Finalist stage: the top {plan['top_k']} trials by search value, retrained on "
        f"{plan['n']} {plan['mode']} and judged again by the study's objective (constraints "
        f"on the {html.escape(record['constraints_on'].replace('_', ' '))}). {verdict}; the "
        f"search's own best was trial {record['search_best']}. The optimism gap is the search "
        "value minus the confirmed value: what the search's maximum promised beyond what held "
        "up.</p><table><tr><th>trial</th><th>search value</th><th>confirmed value</th>"
        "<th>optimism gap</th><th>feasible</th><th>confirmed on</th><th>why not</th></tr>"
        f"{rows}</table>"
    )


def _checklist_html(r: ReportRecords) -> str:
    if r.best is None:
        return "<section id='checklist'><h2>Medical-grade checklist</h2><p>No trial.</p></section>"
    rows = "".join(
        f"<tr class='{c.result}'><td>{html.escape(c.name)}</td>"
        f"<td>{html.escape(c.shown())}</td><td>{html.escape(c.threshold)}</td>"
        f"<td>{'-' if c.unit else f'{num(c.lower)} - {num(c.upper)}'}</td>"
        f"<td>{c.result.upper()}</td>"
        f"<td>{html.escape(c.detail)}</td></tr>"
        for c in r.checklist
    )
    kind = {
        "finalists": "crowned finalist, confirmed:",
        "no winner": "no winner named (no finalist held up); the search's best,",
    }.get(r.best_source, "best feasible" if r.best_feasible else "best (infeasible)")
    return (
        f"<section id='checklist'><h2>Medical-grade checklist: {kind} trial "
        f"{r.best.number}</h2><p class='caveat'>Judged on the validation split the search "
        "ranked and pruned on: an optimistic figure until a held-out test set confirms it. "
        "PASS: the whole 95% interval meets the requirement; FAIL: it lies below; "
        "INCONCLUSIVE: too few images to tell."
        "</p><table><tr><th>criterion</th><th>observed</th>"
        f"<th>required</th><th>Wilson 95% interval</th><th>result</th><th>evidence</th>"
        f"</tr>{rows}</table></section>"
    )


def _held_out_html(r: ReportRecords) -> str:
    """The held-out test figures of ``drsearch evaluate`` and the finalists of ``confirm``."""
    from drsearch.inspect.report.evaluation import interval

    parts = ["<section id='evaluation'><h2>Held-out test set and repeated seeds</h2>"]
    if not r.evaluations:
        parts.append(
            "<p class='hint'>No evaluation yet: <code>drsearch evaluate STUDY.yaml</code> "
            "measures the best trial once on the held-out test set.</p>"
        )
    else:
        head = ("evaluated", "test images", "accuracy", "QWK", "referable sens.",
                "referable spec.", "referable AUC", "file")  # fmt: skip
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{c}</td>"
                for c in (
                    html.escape(tag),
                    e["test"]["n"],
                    interval(e["test"]["accuracy"]),
                    interval(e["test"]["qwk"]),
                    interval(e["test"]["referable_sensitivity"]),
                    interval(e["test"]["referable_specificity"]),
                    interval(e["test"]["referable_auc"]),
                    html.escape(str(e.get("file", ""))),
                )
            )
            + "</tr>"
            for tag, e in sorted(r.evaluations.items())
        )
        parts.append(
            "<p>Measured once on the test split no trial saw, at the operating points chosen "
            "on validation (95% intervals).</p><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr>{rows}</table>"
        )
    if r.test_uses:
        candidates = sorted({tuple(u["trials"]) for u in r.test_uses})
        named = "; ".join("trials " + ", ".join(map(str, c)) for c in candidates)
        caveat = (
            " Figures of every candidate after the first are no longer unbiased: choosing "
            "among them by their test figures makes those optimistic too."
            if len(candidates) > 1
            else ""
        )
        parts.append(
            f"<p class='caveat'>The test set has been used {len(r.test_uses)} time(s), for "
            f"{len(candidates)} candidate(s) ({html.escape(named)}).{caveat}</p>"
        )
    if r.confirm:
        parts.append(_finalists_html(r.confirm))
    return "".join(parts) + "</section>"


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


def _baseline_line(r: ReportRecords) -> str:
    """The baseline trial (the base recipe as it is, ``baseline:``) and the best's gain over
    it; empty when the study ran none."""
    base = next((t for t in r.trials if t.attrs.get("queued_from") == "baseline"), None)
    if base is None:
        return ""
    if base.state != "COMPLETE" or base.value is None:
        return f"<p>Baseline (the base recipe as it is): trial {base.number}, {base.state}.</p>"
    kind = "feasible" if base.feasible else "infeasible"
    line = (
        f"Baseline (the base recipe as it is): trial {base.number}, value {base.value:.4f} ({kind})"
    )
    if r.best is not None and r.best.value is not None and r.best.number != base.number:
        gain = r.best.value - base.value
        line += (
            f"; the best trial {r.best.number} is {gain:+.4f} over it on the validation split "
            "(the best of many trials is optimistic: the finalist stage or confirm says how "
            "much of the gain holds up)"
        )
    elif r.best is not None and r.best.number == base.number:
        line += "; no searched trial beat it"
    return f"<p>{html.escape(line)}.</p>"


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
tr.inconclusive td:nth-child(5) {{ color: #a36b00; font-weight: bold; }}
section {{ margin-top: 2em; }} .empty, .caveat {{ color: #777; }}
</style></head><body>
<h1>Study {html.escape(r.study)}</h1>
<p>Objective: {html.escape(r.metric)} on the best epoch; study constraints: {constraints}.
All figures are on the validation split.</p>
<p>{_best_line(r)}</p>
{_baseline_line(r)}
<ul>{notes}</ul>
{body}
</body></html>
"""
