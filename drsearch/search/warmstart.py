"""Configurations queued before the sampler's own: a warm start from an earlier study's best
feasible trials, and the baseline (the base recipe as it is).

Both are queued once per study, under the study's lock, and the sources queued are recorded
in the study (``QUEUED_ATTR``): several runners starting at once, or a study continued, never
queue them twice (Optuna's ``enqueue_trial`` from each runner would: optuna#2925). A queued
configuration is claimed like any trial (``StudyStore.claim``: Optuna hands out WAITING
trials first), so it runs once, and the sampler sees it among its first trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from drsearch.config.space import CategoricalParam, FloatParam, IntParam, SearchSpace, _active
from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.io import get_dotted
from drsearch.ranking import by_value, ranked_trials

#: Study system attribute: the sources already queued (``baseline``, ``study NAME@UUID``).
QUEUED_ATTR = "drsearch:queued_sources"
#: Trial user attribute: where a queued configuration came from.
FROM_ATTR = "queued_from"
BASELINE = "baseline"


def within(param: Any, value: Any) -> bool:
    """Whether ``value`` is a point of ``param``'s range (or one of its choices)."""
    if isinstance(param, CategoricalParam):
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(param, IntParam):
        ok = float(value).is_integer() and param.low <= value <= param.high
        return ok and (int(value) - param.low) % param.step == 0
    if isinstance(param, FloatParam):
        return param.low <= float(value) <= param.high
    return False


def _show(param: Any) -> str:
    if isinstance(param, CategoricalParam):
        return f"choices {param.choices}"
    return f"[{param.low:g}, {param.high:g}]"


@dataclass
class Mapped:
    """An earlier configuration on this study's space."""

    params: dict[str, Any]
    dropped: list[str] = field(default_factory=list)  # not in this space: left out
    outside: list[str] = field(default_factory=list)  # outside this space: refused


def map_onto(params: dict[str, Any], space: SearchSpace) -> Mapped:
    """``params`` on ``space``: keys the space lacks are dropped (the recipe's value holds),
    values outside its bounds or choices make the configuration refused; keys of the space
    the earlier study did not search are left to the sampler."""
    mapped = Mapped({})
    for key, value in params.items():
        param = space.get(key)
        if param is None:
            mapped.dropped.append(key)
        elif not within(param, value):
            mapped.outside.append(f"{key}={value!r} outside {_show(param)}")
        else:
            mapped.params[key] = value
    return mapped


def _source(loaded: LoadedStudy) -> tuple[str, str, str]:
    """The earlier study of ``warm_start``: (study name, storage URL, how it was named)."""
    ws = loaded.config.warm_start
    assert ws is not None
    if ws.study is not None:
        from drsearch.config.study import load_study

        path = ws.study
        if not path.is_file():
            raise ConfigError(
                f"{loaded.path}: warm_start.study: {path} is not a file (a study file, "
                "relative to the current directory)"
            )
        other = load_study(path)
        return other.config.name, other.config.storage_url(), str(path)
    assert ws.study_name is not None and ws.storage is not None
    return ws.study_name, ws.storage, ws.study_name


def source_key(loaded: LoadedStudy) -> str:
    """How the study records that a warm start's source was queued."""
    from drsearch.search.database import masked_url

    name, url, _ = _source(loaded)
    return f"study {name} in {masked_url(url)}"


def earlier_best(loaded: LoadedStudy) -> list[optuna.trial.FrozenTrial]:
    """The source's best ``top_k`` feasible complete trials, best first."""
    from sqlalchemy.engine import make_url

    from drsearch.search.database import make_storage, masked_url

    name, url, named = _source(loaded)
    parsed = make_url(url)
    local = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if local and not Path(str(parsed.database)).is_file():  # never create an empty one to read
        raise ConfigError(
            f"{loaded.path}: warm_start: {named}'s storage {masked_url(url)} does not exist "
            "(run that study first, or name its storage)"
        )
    try:
        study = optuna.load_study(study_name=name, storage=make_storage(url))
    except KeyError:
        raise ConfigError(
            f"{loaded.path}: warm_start: no study {name!r} in {masked_url(url)}"
        ) from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    top = [r for r in by_value(ranked_trials(trials.values())) if r.feasible]
    k = loaded.config.warm_start.top_k if loaded.config.warm_start else 0
    return [trials[r.number] for r in top[:k]]


def baseline_params(loaded: LoadedStudy) -> dict[str, Any]:
    """The searched keys at the base recipe's own values (the active ones, in file order)."""
    flat = loaded.recipe.model_dump(mode="json")
    params: dict[str, Any] = {}
    for key, param in loaded.space.items():
        if not _active(param, params, flat):
            continue
        value = get_dotted(flat, key)
        head, _, last = key.rpartition(".")
        if value is None and last.isdigit() and get_dotted(flat, head) == "none":
            value = 1.0  # no class weights: every weight is 1
        if value is None or not within(param, value):
            raise ConfigError(
                f"{loaded.path}: baseline: the recipe's {key} is {value!r}, outside the search "
                f"space's {_show(param)}: the baseline must be a point of the space (widen it "
                "in the search space, or change the recipe)"
            )
        params[key] = value
    return params


@dataclass(frozen=True)
class Queued:
    """What ``queue`` did (one line each) and what it warns of (a key dropped, a
    configuration refused)."""

    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def queue(store: Any, loaded: LoadedStudy) -> Queued:
    """Queue the baseline and the warm start, each once per study."""
    cfg = loaded.config
    if loaded.companion:  # a confirmation study's runs are its finalists, nothing else
        return Queued()
    study_id = store.study._study_id

    def queued() -> list[str]:
        return list(store.storage.get_study_system_attrs(study_id).get(QUEUED_ATTR, []))

    before = queued()
    wanted: list[tuple[str, list[tuple[dict[str, Any], str]], list[str]]] = []
    said = Queued()
    if cfg.baseline is not None and cfg.baseline.enabled and BASELINE not in before:
        wanted.append((BASELINE, [(baseline_params(loaded), BASELINE)], []))
    if cfg.warm_start is not None and source_key(loaded) not in before:
        key = source_key(loaded)
        configs, notes = [], []
        for t in earlier_best(loaded):
            mapped = map_onto(t.params, loaded.space)
            label = f"{key.split(' in ')[0]} trial {t.number}"
            if mapped.outside:
                notes.append(f"warm start: {label} refused: {'; '.join(mapped.outside)}")
                continue
            if mapped.dropped:
                notes.append(
                    f"warm start: {label}: {', '.join(mapped.dropped)} not searched here: "
                    "dropped (the recipe's value holds)"
                )
            configs.append((mapped.params, label))
        wanted.append((key, configs, notes))
    if not wanted:
        return said
    with store.lock.hold():
        done = queued()  # again, under the lock: another runner may have queued them
        for key, configs, notes in wanted:
            if key in done:
                continue  # said by the runner that queued them
            said.warnings.extend(notes)
            for params, label in configs:
                store.study.enqueue_trial(params, user_attrs={FROM_ATTR: label})
            done.append(key)
            if key == BASELINE:
                said.done.append("queued the baseline (the base recipe as it is) as the next trial")
            else:
                top_k = cfg.warm_start.top_k if cfg.warm_start else 0
                said.done.append(
                    f"queued {len(configs)} configuration(s) of {key} (its best feasible, "
                    f"top_k {top_k}) before the sampler's own trials"
                )
        store.storage.set_study_system_attr(study_id, QUEUED_ATTR, done)
    return said


def check_queued(loaded: LoadedStudy) -> list[str]:
    """For ``drsearch check``: the baseline is a point of the space and the warm start's
    source opens (else ``ConfigError``); what the warm start would refuse or drop (warnings)."""
    if loaded.config.baseline is not None and loaded.config.baseline.enabled:
        baseline_params(loaded)
    if loaded.config.warm_start is None:
        return []
    said = []
    best = earlier_best(loaded)
    for t in best:
        mapped = map_onto(t.params, loaded.space)
        if mapped.outside:
            said.append(f"warm start: trial {t.number} would be refused: "
                        f"{'; '.join(mapped.outside)}")  # fmt: skip
    if not best:
        said.append("warm start: the earlier study has no feasible complete trial to start from")
    return said
