"""``drsearch run STUDY --smoke``: the same study, shrunk into a wiring check.

A smoke study keeps everything that decides which code runs (executor, sampler, pruner,
objective and constraints, loss, augmentation, MixUp/CutMix, EMA, LoRA, gradient
accumulation, schedule type, preprocessing, the number of resize phases) and shrinks what only
costs time:

- data: a few synthetic fundus images (every grade present) instead of the study's dataset;
- model: the study's own architecture made tiny (a ViT keeps its class, pooling and patch
  size with 2 blocks of width 64), or timm's ``test_*`` model of the family (EfficientNet,
  ConvNeXt, ResNet); never pretrained weights;
- image sizes scaled down to at most ``smoke.max_image_size``;
- epochs: 2, or one per resize phase; epoch-valued settings and search bounds (warmup, restart
  period, step period, patience, phase starts) scaled by the same factor;
- budget: ``smoke.n_trials`` trials one at a time (on the CPU, or on a GPU when the machine
  has one), under ``<run_root>/smoke/`` in its own SQLite file, never the study's database;
- a finalist stage: one finalist, on 2 folds or 2 seeds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drsearch.config.loading import parse_config
from drsearch.config.recipe import Recipe
from drsearch.config.space import CategoricalParam, FloatParam, IntParam
from drsearch.config.study import LoadedStudy, StudyConfig

#: timm ``test_*`` stand-ins by family (substring of the model name).
TINY_MODELS = (
    ("efficientnet", "test_efficientnet"),
    ("convnext", "test_convnext"),
    ("resnet", "test_resnet"),
    ("nfnet", "test_nfnet"),
    ("maxvit", "test_maxvit"),
    ("coatnet", "test_coatnet"),
)
#: A ViT shrunk in place: same class, pooling and patch size, 2 blocks of width 64.
TINY_VIT = {"embed_dim": 64, "depth": 2, "num_heads": 4}

_EPOCH_KEYS = re.compile(r"^(schedule\.(warmup_epochs|t0|step_epochs)|train\.patience)$")
_PHASE_EPOCH = re.compile(r"^data\.progressive\.(\d+)\.epoch$")
_SIZE_KEYS = re.compile(r"^data\.(image_size|progressive\.\d+\.size)$")

Param = FloatParam | IntParam | CategoricalParam


def smoke_folder(config: StudyConfig) -> Path:
    """Scratch folder of a study's smoke runs, replaced by every ``--smoke``."""
    return config.run_root / "smoke"


def smoke_study(loaded: LoadedStudy, use_gpu: bool = False) -> LoadedStudy:
    """``loaded`` shrunk as the module docstring says; validated like any study.

    With ``use_gpu`` (the machine has one), trials keep the study's GPU share (at most one
    GPU) so AMP and the CUDA paths run too; otherwise they run on the CPU.
    """
    cfg, smoke = loaded.config, loaded.config.smoke
    base = loaded.recipe
    phases = len(base.data.progressive)
    epochs = smoke.epochs or max(2, phases)
    scale = Scales(
        epoch=epochs / base.train.epochs,
        size=min(1.0, smoke.max_image_size / max(base.data.sizes())),
        epochs=epochs,
        phases=phases,
        batch=smoke.batch_size,
    )
    folder = smoke_folder(cfg).resolve()
    recipe = _smoke_recipe(base, scale, cfg, folder, loaded.path, use_gpu)
    if recipe.data.cv_folds:  # the finalist stage's folds, shrunk with it
        recipe = recipe.model_copy(
            update={"data": recipe.data.model_copy(update={"cv_folds": 2, "cv_fold": 0})}
        )
    space = {key: _smoke_param(key, param, scale) for key, param in loaded.space.items()}
    gpus = min(cfg.resources.gpus_per_trial, 1.0) if use_gpu else 0.0
    study = _smoke_config(cfg, recipe, folder, epochs, gpus, loaded.path)
    return LoadedStudy(loaded.path, study, recipe, space, smoke=True)


@dataclass(frozen=True)
class Scales:
    """How a smoke study shrinks epochs (``epoch`` factor), image sizes and batches."""

    epoch: float
    size: float
    epochs: int
    phases: int
    batch: int

    def epochs_float(self, value: float) -> float:
        return min(value * self.epoch, self.epochs - 0.5)

    def epochs_int(self, value: int) -> int:
        return max(1 if value >= 1 else 0, round(value * self.epoch))

    def phase_start(self, index: int, value: int) -> int:
        """Phase ``index`` starts in ``[index, epochs - phases + index]`` (strictly ordered)."""
        latest = self.epochs - self.phases + index
        return min(max(round(value * self.epoch), index), latest) if index else 0

    def image_size(self, value: int) -> int:
        return max(32, int(value * self.size / 8 + 0.5) * 8)


def tiny_model(name: str) -> tuple[str, dict[str, Any]]:
    """The smoke stand-in for timm model ``name`` and its extra ``create_model`` arguments."""
    if name.startswith("vit_"):
        return name, dict(TINY_VIT)
    for family, tiny in TINY_MODELS:
        if family in name:
            return tiny, {}
    return name, {}


def _smoke_recipe(
    base: Recipe, scale: Scales, cfg: StudyConfig, folder: Path, path: Path, use_gpu: bool
) -> Recipe:
    n, size = cfg.smoke.n_images, scale.image_size(max(base.data.sizes()))
    raw = base.model_dump(mode="json")
    data, model, train, schedule = raw["data"], raw["model"], raw["train"], raw["schedule"]
    data.update(
        kind="synthetic",
        root=str(folder / f"synthetic-{n}-{size}px"),  # shared by smoke runs of equal data
        csv=None,
        sources=[],
        image_size=scale.image_size(base.data.image_size),
        cache="memory",
        num_workers=0,
        skip_bad=False,
    )
    data["synthetic"] = {"n": n, "size": size, "seed": 0, "imbalance": "balanced"}
    data["progressive"] = [
        {"epoch": scale.phase_start(i, p.epoch), "size": scale.image_size(p.size)}
        for i, p in enumerate(base.data.progressive)
    ]
    name, kwargs = (cfg.smoke.model, {}) if cfg.smoke.model else tiny_model(base.model.name)
    model.update(name=name, pretrained=False, kwargs={**base.model.kwargs, **kwargs})
    train.update(
        epochs=scale.epochs,
        batch_size=min(base.train.batch_size, scale.batch),
        eval_batch_size=None,
        device=base.train.device if use_gpu else "cpu",
        threads=1,
    )
    if base.train.patience is not None:
        train["patience"] = scale.epochs_int(base.train.patience)
    schedule["warmup_epochs"] = scale.epochs_float(base.schedule.warmup_epochs)
    schedule["t0"] = max(0.5, base.schedule.t0 * scale.epoch)
    schedule["step_epochs"] = max(0.5, base.schedule.step_epochs * scale.epoch)
    return parse_config(Recipe, raw, f"{path} (--smoke recipe)")


def _smoke_param(key: str, param: Param, scale: Scales) -> Param:
    phase = _PHASE_EPOCH.match(key)
    if phase:
        index = int(phase.group(1))
        return _mapped(param, lambda v: scale.phase_start(index, int(v)))
    if _SIZE_KEYS.match(key):
        return _mapped(param, lambda v: scale.image_size(int(v)))
    if key == "train.batch_size":
        return _mapped(param, lambda v: min(int(v), scale.batch))
    if _EPOCH_KEYS.match(key):
        if isinstance(param, IntParam) or key == "train.patience":
            return _mapped(param, lambda v: scale.epochs_int(int(v)))
        return _mapped(param, lambda v: scale.epochs_float(float(v)))
    return param


def _mapped(param: Param, fn: Callable[[Any], Any]) -> Param:
    """``param`` with every bound or choice passed through ``fn``; one value -> one choice."""
    if isinstance(param, CategoricalParam):
        choices = [fn(c) if _is_number(c) else c for c in param.choices]
        return CategoricalParam(
            type="categorical", choices=list(dict.fromkeys(choices)), when=param.when
        )
    low, high = fn(param.low), fn(param.high)
    if low >= high:
        return CategoricalParam(type="categorical", choices=[low], when=param.when)
    if isinstance(param, IntParam):
        return IntParam(type="int", low=low, high=high, log=param.log and low > 0, when=param.when)
    step = param.step
    if step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-9:
        step = None
    return FloatParam(
        type="float", low=low, high=high, log=param.log and low > 0, step=step, when=param.when
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _smoke_config(
    cfg: StudyConfig, recipe: Recipe, folder: Path, epochs: int, gpus: float, path: Path
) -> StudyConfig:
    raw = cfg.model_dump(mode="json")
    raw.update(
        recipe=recipe.model_dump(mode="json"),
        overrides={},
        storage=None,
        run_root=str(folder),
        budget={"n_trials": cfg.smoke.n_trials, "time_limit_s": None},
        resources={"cpus_per_trial": 1, "gpus_per_trial": gpus, "max_concurrent": 1},
    )
    raw["pruner"].update(grace_period=min(cfg.pruner.grace_period, epochs), max_epochs=None)
    if raw.get("finalists"):  # one finalist, on 2 folds (the recipe's, shrunk) or 2 seeds
        stage = raw["finalists"]
        stage.update(top_k=1, **{k: 2 for k in ("folds", "seeds") if stage.get(k)})
    return parse_config(StudyConfig, raw, f"{path} (--smoke)")


def reset_smoke(small: LoadedStudy) -> str:
    """Start a smoke study afresh: remove its previous run (only what drsearch made there) and
    generate its data once, before any trial. Returns a line describing the run."""
    from drsearch.data.sources import ensure_synthetic
    from drsearch.io import owned_dir, remove_owned

    cfg, recipe = small.config, small.recipe
    folder = owned_dir(cfg.run_root, cfg.run_root.parent, "smoke runs")  # <run_root>/smoke
    from drsearch.search.selection import confirm_name

    companion = cfg.run_root / confirm_name(cfg.name)
    for stale in (cfg.study_dir, cfg.artifact_dir, companion, Path(f"{companion}-artifacts")):
        remove_owned(stale, folder)
    for made in (f"{cfg.name}.db", f"{cfg.name}.db.lock"):
        (folder / made).unlink(missing_ok=True)
    ensure_synthetic(recipe.data)
    return (
        f"smoke run of {small.path}: {recipe.model.name} at {recipe.data.sizes()} px, "
        f"{recipe.data.synthetic.n} synthetic images, {recipe.train.epochs} epochs, "
        f"{cfg.budget.n_trials} trials on {'GPU' if cfg.resources.gpus_per_trial else 'CPU'} "
        f"-> {cfg.run_root}"
    )
