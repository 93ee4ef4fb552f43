"""What a study ships: exactly what its finalist stage certified.

The finalist stage certifies a configuration on its *confirmation models*: one model per
cross-validation fold (judged on their pooled out-of-fold predictions) or per fresh seed
(judged on the average seed's counts). The search's own trial is another draw of the same
configuration, and the one its validation figure chose (the winner's curse); with real
training noise it can miss a constraint its configuration's other models meet. So what a
study with a crowned finalist ships, exports, evaluates, predicts with and registers is the
certified models themselves, as one ensemble (the mean of their per-grade probabilities):

- folds: every model was judged on images it never trained on, and the pooled figures are
  what each fold model scores on unseen images; their ensemble averages training noise out
  (what APTOS 2019's top solutions shipped), so the certificate is conservative for it;
- seeds: the certificate is the average seed's figures; the ensemble of the seeds again
  averages their noise.

A trial taken by its number (``--trial N``, ``search-best``) is one model, as before, and is
not what the study certified.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from drsearch.clinical import CONFIDENCE, wilson_interval
from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.search.selection import FINALISTS_ATTR, companion_config

if TYPE_CHECKING:
    from drsearch.train.predict import TrainedModel


@dataclass(frozen=True)
class Certified:
    """The crowned finalist's confirmation models, in fold (or seed) order, and its record."""

    finalist: int  # the search trial whose configuration was crowned
    mode: str  # "folds" or "seeds"
    runs: tuple[FrozenTrial, ...]  # trials of the companion study
    entry: dict[str, Any] = field(repr=False)  # the finalist's entry in the stage's record
    study_name: str = ""
    confidence: float = 0.9  # the constraints' one-sided confidence (the objective's)

    @property
    def tag(self) -> str:
        """How its evaluation is keyed: ``finalist9-folds``."""
        return f"finalist{self.finalist}-{self.mode}"

    def label(self, run: FrozenTrial) -> str:
        a = run.user_attrs
        unit = f"fold {a['fold']}" if a.get("fold") is not None else f"seed {a.get('seed')}"
        return f"finalist {self.finalist}, {unit} (run {run.number})"

    def member_name(self, run: FrozenTrial) -> str:
        a = run.user_attrs
        unit = f"fold{a['fold']}" if a.get("fold") is not None else f"seed{a.get('seed')}"
        return f"finalist{self.finalist}-{unit}"


def certified(loaded: LoadedStudy, study: optuna.Study | None = None) -> Certified | None:
    """The study's certified result: its crowned finalist's confirmation runs; ``None`` when
    no finalist stage has crowned one (a study without ``finalists:``, or no winner)."""
    from drsearch.search.database import open_existing

    study = study or open_existing(loaded.config, loaded.path)
    record = study.user_attrs.get(FINALISTS_ATTR)
    if not record or record.get("crowned") is None:
        return None
    crowned = int(record["crowned"])
    entry = next((e for e in record["finalists"] if e["trial"] == crowned), None)
    if entry is None or not entry.get("runs"):
        return None
    companion = open_existing(companion_config(loaded.config), loaded.path)
    trials = companion.get_trials(deepcopy=False)
    runs = []
    for number in entry["runs"]:
        if number >= len(trials) or trials[number].state != TrialState.COMPLETE:
            raise ConfigError(
                f"{loaded.path}: confirmation run {number} of finalist {crowned} is not "
                f"complete in {companion.study_name!r} any more; run it again with drsearch "
                f"confirm {shlex.quote(str(loaded.path))} --retry-failed"
            )
        runs.append(trials[number])
    runs.sort(key=lambda t: (t.user_attrs.get("fold") or 0, t.user_attrs.get("seed") or 0))
    return Certified(crowned, record["plan"]["mode"], tuple(runs), entry, loaded.config.name,
                     float(record.get("confidence") or 0.9))  # fmt: skip


def member_models(c: Certified) -> list[TrainedModel]:
    """The certified models, each with its recipe (its fold or seed) and selected weights."""
    from dataclasses import replace

    from drsearch.search.export import trial_model

    return [replace(trial_model(run), label=c.label(run), trial=c.finalist) for run in c.runs]


def certificate(c: Certified) -> dict[str, Any]:
    """What the study certified, as an evaluation and an export carry it: the evidence, the
    confirmed figures, each constraint's one-sided lower bound and the decision, and the
    primary metric's 95% Wilson interval where it is a proportion (accuracy)."""
    e = c.entry
    n = e.get("n_images")
    acc = (e.get("metrics") or {}).get("accuracy")
    interval = wilson_interval(acc * n, n) if acc is not None and n else None
    return {
        "study": c.study_name,
        "finalist": c.finalist,
        "mode": c.mode,
        "runs": [t.number for t in c.runs],
        "evidence": e.get("evidence"),
        "n_images": n,
        "confirmed_value": e.get("confirmed_value"),
        "confirmed_primary": e.get("confirmed_primary"),
        "metrics": e.get("metrics"),
        "accuracy_interval": None if interval is None else list(interval),
        "confidence": CONFIDENCE,  # the accuracy interval's, two-sided
        "constraint_confidence": c.confidence,  # each constraint's lower bound, one-sided
        "constraints": [
            {k: j.get(k) for k in ("name", "value", "lower", "minimum", "met", "n")}
            for j in e.get("judgements") or []
        ],
        "feasible": e.get("feasible"),
    }


def held(cert: dict[str, Any], test_metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Each certified figure beside the test set's: accuracy inside (or above) its certified
    95% interval, each constraint's test figure at or above its certified lower bound. A
    certificate says a model is at least this good; scoring better on test is holding."""
    rows = []
    interval = cert.get("accuracy_interval")
    if interval is not None and test_metrics.get("accuracy") is not None:
        t = float(test_metrics["accuracy"])
        rows.append({"figure": "accuracy", "certified": cert["metrics"]["accuracy"],
                     "bound": interval[0], "test": t, "held": t >= interval[0]})  # fmt: skip
    for j in cert.get("constraints") or []:
        metric = j["name"].split(">=")[0]
        t = test_metrics.get(metric)
        if t is None or j.get("lower") is None:
            continue
        rows.append({"figure": metric, "certified": j["value"], "bound": j["lower"],
                     "test": float(t), "held": float(t) >= float(j["lower"])})  # fmt: skip
    return rows
