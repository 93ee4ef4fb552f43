"""Checks before a study spends anything: its data and weights exist (a synthetic set is
generated once, here), its validation split can compute the metrics the objective and the
constraints need, and a sample of its configurations are valid recipes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError

#: How a warning of low power starts (``run`` says it before a study starts, not on each
#: continuation).
LOW_POWER = "low power: "


def check_inputs(
    loaded: LoadedStudy,
    generate: bool = True,
    evidence: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> list[str]:
    """Before any trial: the data and weights the recipe names exist, and a synthetic set is
    generated (once for the whole study, not once per trial; not at all without
    ``generate``); the validation split can measure and certify what the study asks.
    Raises one error naming every problem (``input_problems``); returns warnings to show;
    ``evidence`` receives one line per constraint: its images; ``data`` the fingerprint of
    the data as listed for the split (``listed_fingerprint``), which the study stores."""
    problems, warnings = input_problems(loaded, generate, evidence, data)
    if problems:
        raise problems_error(problems)
    return warnings


def input_problems(
    loaded: LoadedStudy,
    generate: bool = True,
    evidence: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Every problem ``check_inputs`` finds, not only the first, and its warnings."""
    problems: list[str] = []
    warnings: list[str] = []

    def attempt(check: Callable[[], list[str] | None]) -> bool:
        try:
            out = check()
        except ConfigError as exc:
            problems.append(str(exc))
            return False
        warnings.extend(out or [])
        return True

    attempt(lambda: check_run_root(loaded))
    attempt(lambda: check_weights_exist(loaded))
    data_found = attempt(lambda: check_data_exists(loaded, generate))
    attempt(lambda: check_placement(loaded))
    if data_found:  # its split's images are counted only once the data is there
        attempt(lambda: check_metrics_computable(loaded, evidence, generate, data))
    return problems, warnings


def problems_error(problems: list[str]) -> ConfigError:
    """One problem as its own line; several as one error that numbers them."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(
        f"{len(problems)} problems to fix before this study can run:\n"
        + "\n".join(f"  {n}. {p}" for n, p in enumerate(problems, start=1))
    )


def check_data_exists(loaded: LoadedStudy, generate: bool = True) -> None:
    """Each data source's folder (or CSV) exists; a synthetic one is generated (with
    ``generate``). A missing one says what the folder must hold, where to get it, and how to
    try the study without it."""
    from drsearch.config.loading import relative_hint
    from drsearch.data.adapters import LAYOUTS

    data = loaded.recipe.data
    singles = [
        (
            f"data.sources.{i}",
            data.model_copy(update={"kind": s.kind, "root": s.root, "csv": s.csv}),
        )
        for i, s in enumerate(data.sources)
    ] or [("data", data)]
    missing, where = [], ""
    for key, single in singles:
        if single.kind == "synthetic":
            from drsearch.data.sources import ensure_synthetic

            if generate:
                ensure_synthetic(single)
            continue
        field, wanted = ("csv", single.csv) if single.kind == "csv" else ("root", single.root)
        if wanted is not None and not wanted.exists():
            given, where = _as_given(wanted), f"{key}.{field}"
            missing.append(
                f"{key}.{field}: {given} not found{relative_hint(loaded.path, given)}; it "
                f"should hold {LAYOUTS.get(single.kind, single.kind)}"
            )
    if missing:
        raise ConfigError(
            f"{loaded.path}: {'; '.join(missing)}. Put the data there or point {where} at it; "
            f"to try the study without it: drsearch run {loaded.path} --smoke (a few "
            "synthetic images)"
        )


def _as_given(path: Path) -> Path:
    """A path the study resolved against the working directory, as the user wrote it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def check_placement(loaded: LoadedStudy) -> None:
    """On this machine, each trial's memory (``resources.memory_gb_per_trial``) and, under
    Ray, its CPUs and GPUs must fit on it: a trial that asks for more is never placed (Ray
    keeps it PENDING, silently, forever). A cluster (``ray.address``) is asked by Ray itself,
    and a trial it keeps PENDING is explained by the Ray runner."""
    import os

    cfg = loaded.config
    res = cfg.resources
    if cfg.executor == "ray" and cfg.ray.address:
        return
    problems = []
    if res.memory_gb_per_trial is not None:
        import psutil

        total = psutil.virtual_memory().total / 1024**3
        if res.memory_gb_per_trial > total:
            problems.append(
                f"resources.memory_gb_per_trial: {res.memory_gb_per_trial:g} GiB per trial, but "
                f"this machine has {total:.1f} GiB of memory"
            )
    cpus = os.cpu_count() or 1
    if cfg.executor == "ray" and res.cpus_per_trial > cpus:  # the local executor shares them
        problems.append(
            f"resources.cpus_per_trial: {res.cpus_per_trial:g} per trial, but this machine "
            f"has {cpus} CPU{'s' if cpus != 1 else ''}"
        )
    if res.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        has = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU (CUDA not available)"
        if res.gpus_per_trial > gpus:
            problems.append(
                f"resources.gpus_per_trial: {res.gpus_per_trial:g} per trial, but this machine "
                f"has {has}"
            )
    if problems:
        pending = " (Ray would keep it PENDING)" if cfg.executor == "ray" else ""
        raise ConfigError(
            f"{loaded.path}: {'; '.join(problems)}: no trial could ever be placed{pending}; "
            "lower them in the study's resources, run where they exist, or join a cluster "
            "that has them with --ray-address (--smoke tries the wiring here)"
        )


def check_run_root(loaded: LoadedStudy) -> None:
    """The run root is a folder drsearch can write in, or can be created as one: said in one
    line before the study's database or any trial folder is made there."""
    import os

    root = loaded.config.run_root
    where = f"{loaded.path}: run_root: {root}"
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{where}: {existing} is a file, not a folder; name a folder (or a new one) with "
            "run_root or --run-root"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == root else f" (its nearest existing folder {existing})"
        raise ConfigError(
            f"{where}: not writable{what}; name a folder you can write in with run_root or "
            "--run-root"
        )


def check_metrics_computable(
    loaded: LoadedStudy,
    evidence: list[str] | None = None,
    generate: bool = True,
    data_fingerprint: dict[str, Any] | None = None,
) -> list[str]:
    """Count the validation images behind the objective and each constraint (as the base
    recipe splits the data, before any unreadable image is dropped); ``data_fingerprint``
    receives the fingerprint of that listing (the data are listed once). Refuse a study whose
    split lacks the grades a metric needs, or (``constraints_on: lower_bound``) has too few
    to certify a minimum at the study's confidence even with none missed; under ``point``,
    say so as a warning (a point estimate on few images is a range). Returns the warnings."""
    import numpy as np

    from drsearch.clinical import DENOMINATOR_GRADES
    from drsearch.data.fingerprint import listed_fingerprint
    from drsearch.data.records import Skipped
    from drsearch.data.sources import load_records
    from drsearch.data.split import data_split
    from drsearch.errors import DataError

    cfg = loaded.config
    objective = cfg.objective
    wanted = [(f"objective.constraints.{i}", c) for i, c in enumerate(objective.constraints)]
    data = loaded.recipe.data
    try:
        records = load_records(data, Skipped())
        sides = data_split(records, data)
    except DataError as exc:
        synthetic = data.kind == "synthetic" or any(s.kind == "synthetic" for s in data.sources)
        if synthetic and not generate:
            return []  # `check` does not generate the synthetic set; `run` does, then counts
        # found before any trial is claimed, instead of by every trial (each counted FAIL)
        raise ConfigError(f"{loaded.path}: data: {exc}") from None
    if data_fingerprint is not None:
        data_fingerprint.update(listed_fingerprint(records, sides))
    if not wanted and objective.metric != "referable_auc":
        return []
    counts = np.bincount([records[i].label for i in sides.val], minlength=5)
    # a finalist stage on folds judges its finalists on every non-test image
    folds = cfg.finalists.folds if cfg.finalists else None
    pooled = np.bincount(  # the images the folds deal out: not held out, not use: train/val
        [records[i].label for i in np.union1d(sides.train, sides.val) if records[i].use == "split"],
        minlength=5,
    )
    if objective.metric == "referable_auc" and (counts[2:].sum() == 0 or counts[:2].sum() == 0):
        raise ConfigError(
            f"{loaded.path}: objective.metric: referable_auc is undefined on this validation "
            f"split: it needs images of grades 0-1 and of 2-4 (validation grade counts "
            f"{counts.tolist()}); use data with such images or a larger data.val_fraction"
        )
    out: list[str] = []
    powers: list[float] = []
    low: list[str] = []  # low power: said after the refusals' warnings
    for key, c in wanted:
        grades = DENOMINATOR_GRADES.get(c.metric)
        if grades is None:
            continue
        n = int(counts[list(grades)].sum())
        names = " or ".join(str(g) for g in grades)
        if n == 0:
            raise ConfigError(
                f"{loaded.path}: {key}: {c.metric} is undefined on this validation split: "
                f"it has no image of grade {names} (validation grade counts "
                f"{counts.tolist()}); use data with such images, a larger "
                "data.val_fraction, or drop the constraint"
            )
        problem = evidence_problem(c.metric, c.min, n, objective.confidence, names)
        n_pool = int(pooled[list(grades)].sum())
        if evidence is not None:
            from drsearch.clinical import images_to_certify

            need = images_to_certify(c.min, objective.confidence)
            one = images_to_certify(c.min, objective.confidence, misses=1)
            evidence.append(
                f"{c.metric} >= {c.min:g}: {n} validation images of grade {names}"
                + (f", {n_pool} over the {folds} folds" if folds else "")
                + f" (at {objective.confidence:.0%}: {need} needed with none missed, {one} to "
                "allow one miss)"
            )
        # the chance a good model is certified where the study's verdict is made: the pooled
        # folds of a finalist stage on folds, else the validation split
        judged = n_pool if folds else n
        if judged and 0.0 < c.min < 1.0 and objective.constraints_on == "lower_bound":
            from drsearch.search.power import TARGET_POWER, power_line

            where = (f"grade {names}, pooled over the finalists' {folds} folds" if folds
                     else f"validation images of grade {names}")  # fmt: skip
            pool = "" if folds else "; a finalist stage on folds pools every non-test image"
            fix = f"more images of grade {names}{pool}"
            line, chance = power_line(c.metric, c.min, judged, objective.confidence, where, fix)
            powers.append(chance)
            if evidence is not None:
                evidence.append(line)
            if chance < TARGET_POWER:
                low.append(f"{loaded.path}: {key}: {LOW_POWER}{line.removeprefix('power: ')}")
        if problem is None:
            continue
        if folds and evidence_problem(c.metric, c.min, n_pool, objective.confidence, names) is None:
            out.append(
                f"{loaded.path}: {key}: {problem}: the search's own verdicts rest on few "
                f"images; its finalists are judged on all {n_pool} images of the {folds} folds"
            )
            continue
        fixes = (
            # the folds already pool every non-test image: more folds add none
            f"add images of grade {names}, hold out fewer for testing (data.test_fraction, now "
            f"{data.test_fraction:g}), or lower the minimum"
            if folds
            else f"raise data.val_fraction (now {data.val_fraction:g}), add images of grade "
            f"{names}, pool folds with finalists: {{folds: K}} (every non-test image is "
            "validation once), or lower the minimum"
        )
        if loaded.smoke:
            out.append(f"{loaded.path}: {key}: {problem} (a smoke run: said, not refused)")
        elif objective.constraints_on == "lower_bound":
            raise ConfigError(f"{loaded.path}: {key}: {problem}; {fixes}")
        else:
            out.append(
                f"{loaded.path}: {key}: {problem}: under constraints_on: point a pass on so "
                f"few images is luck; {fixes}"
            )
    if evidence is not None and len(powers) > 1:
        from drsearch.search.power import joint_power

        evidence.append(
            f"power, every constraint at once: {joint_power(powers):.0%} for a model halfway "
            "above each minimum (taken as independent)"
        )
    return out + low


def evidence_problem(
    metric: str, minimum: float, n: int, confidence: float, grades: str
) -> str | None:
    """Why ``n`` images cannot certify ``metric >= minimum`` at ``confidence``, or ``None``."""
    from drsearch.clinical import images_to_certify

    needed = images_to_certify(minimum, confidence)
    if needed is not None and n >= needed:
        return None
    one_miss = images_to_certify(minimum, confidence, misses=1)
    need = (
        "no count can certify a minimum of 1"
        if needed is None
        else f"needs >= {needed} with none missed, >= {one_miss} to allow one miss"
    )
    return (
        f"{metric} >= {minimum:g} cannot be certified at {confidence:.0%} confidence from "
        f"{n} validation images of grade {grades} (its one-sided Wilson lower bound {need})"
    )


def check_weights_exist(loaded: LoadedStudy) -> None:
    """Fail before any trial starts when the recipe's weights file is missing."""
    pretrained = loaded.recipe.model.pretrained
    if pretrained is False:
        return
    from drsearch.train.named_weights import is_named

    if is_named(pretrained):
        return
    path = Path(pretrained)
    if not path.is_file():
        raise ConfigError(
            f"{loaded.path}: model.pretrained: weights file {pretrained} not found; download "
            "it (gated weights need a local copy), set model.pretrained: false, or try the "
            "wiring with --smoke"
        )
    # read as a trial would (never unpickled): a refused or damaged file is found here, not
    # by every trial in turn
    where = f"{loaded.path}: model.pretrained: {path}"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ConfigError(f"{where}: not a readable safetensors file ({first})") from None
    else:
        from drsearch.train.checkpoint import load_weights_only

        load_weights_only(path, where, "save a plain state dict (or safetensors)", ConfigError)


def sample_problems(loaded: LoadedStudy, n: int, seed: int = 0) -> list[str]:
    """Draw ``n`` configurations of the space at random (in memory, nothing stored) and
    validate each as a whole recipe; the one-line problem of each that fails."""
    import optuna

    from drsearch.config.space import sample, trial_recipe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    problems = []
    for i in range(n):
        trial = study.ask()
        try:
            trial_recipe(loaded.recipe, sample(trial, loaded.space, loaded.recipe), f"sample {i}")
        except ConfigError as exc:
            problems.append(str(exc))
        study.tell(trial, 0.0)
    return problems
