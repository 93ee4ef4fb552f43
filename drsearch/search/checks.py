"""Checks before a study spends anything: its data and weights exist (a synthetic set is
generated once, here), and a sample of its configurations are valid recipes."""

from __future__ import annotations

from pathlib import Path

from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError


def check_inputs(loaded: LoadedStudy, generate: bool = True) -> None:
    """Before any trial: the data and weights the recipe names exist, and a synthetic set is
    generated (once for the whole study, not once per trial; not at all without
    ``generate``)."""
    check_weights_exist(loaded)
    data = loaded.recipe.data
    singles = [
        (
            f"data.sources.{i}",
            data.model_copy(update={"kind": s.kind, "root": s.root, "csv": s.csv}),
        )
        for i, s in enumerate(data.sources)
    ] or [("data", data)]
    for key, single in singles:
        if single.kind == "synthetic":
            from drsearch.data.sources import ensure_synthetic

            if generate:
                ensure_synthetic(single)
            continue
        field, wanted = ("csv", single.csv) if single.kind == "csv" else ("root", single.root)
        if wanted is not None and not wanted.exists():
            raise ConfigError(
                f"{loaded.path}: {key}.{field}: {wanted} not found (relative paths in a study "
                f"and its recipe are read from the directory drsearch runs in, {Path.cwd()}); "
                "run drsearch from the folder the paths are relative to, or make them absolute"
            )


def check_weights_exist(loaded: LoadedStudy) -> None:
    """Fail before any trial starts when the recipe's weights file is missing."""
    pretrained = loaded.recipe.model.pretrained
    if pretrained is False:
        return
    from drsearch.train.named_weights import is_named

    if not is_named(pretrained) and not Path(pretrained).is_file():
        raise ConfigError(
            f"{loaded.path}: model.pretrained: weights file {pretrained} not found; download "
            "it (gated weights need a local copy), set model.pretrained: false, or try the "
            "wiring with --smoke"
        )


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
