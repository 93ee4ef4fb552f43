"""Pydantic models of a training recipe: the one place where recipe files are validated.

Every section forbids unknown keys, so a typo is an error instead of a silently ignored
setting. Cross-field rules (warmup shorter than training, phases inside the run, ...) live in
``Recipe`` validators so that each message can name the key path the user has to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from drsearch import NUM_CLASSES
from drsearch.config.base import (  # noqa: F401 - re-exported: recipe sections' types
    Epochs,
    Fraction,
    NonNegFloat,
    PositiveFloat,
    Section,
    Seed,
)
from drsearch.config.objective import ObjectiveConfig

#: Validation metrics a recipe may monitor (early stopping, best checkpoint, plateau).
MONITOR_METRICS = {
    "accuracy": "max",
    "balanced_accuracy": "max",
    "qwk": "max",
    "macro_f1": "max",
    "referable_auc": "max",
    "loss": "min",
    # the study's objective (primary metric minus the constraint penalty): train.objective
    "objective": "max",
}


class SynthConfig(Section):
    """How the synthetic fundus set is generated when ``data.kind`` is ``synthetic``."""

    n: int = Field(600, ge=10, le=1_000_000)
    size: int = Field(128, ge=32, le=1024)
    seed: Seed = 0
    imbalance: Literal["eyepacs", "balanced"] = "eyepacs"


class ResizePhase(Section):
    """One phase of progressive resizing: from ``epoch`` (0-based) on, train at ``size`` px."""

    epoch: int = Field(ge=0, le=100_000)
    size: int = Field(ge=16, le=2048)


class PreprocessConfig(Section):
    """Deterministic fundus preprocessing, done once per image (see data/preprocess.py)."""

    crop_border: bool = False
    border_threshold: int = Field(10, ge=0, le=254)
    # pad to a square (black, centred) before resizing, so a non-square photograph's fundus
    # stays round; false squashes it to the square training size
    keep_aspect: bool = True
    ben_graham: bool = False
    ben_graham_sigma: float = Field(0.1, gt=0, le=1)
    circular_mask: bool = False


#: ImageNet weights that ship inside packages, named instead of a file (train/named_weights.py).
NAMED_PRETRAINED = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")

DatasetKind = Literal[
    "synthetic", "aptos2019", "csv", "eyepacs", "idrid", "ddr", "messidor2", "folder"
]


class SourceConfig(Section):
    """One dataset of several (``data.sources``), and what it is used for."""

    kind: DatasetKind
    root: Path
    csv: Path | None = None
    name: str | None = None
    #: ``test``: a held-out test set (e.g. APTOS's or IDRiD's official one) that only
    #: ``drsearch evaluate`` reads; a search never sees it
    use: Literal["split", "train", "val", "test"] = "split"


class DataConfig(Section):
    """Where the images are, how they are split and how they are cached.

    ``sources`` combines datasets (e.g. EyePACS for training, APTOS for validation); when it
    is set, ``kind``, ``root`` and ``csv`` are not used.
    """

    kind: DatasetKind = "synthetic"
    root: Path = Path("data/synth")
    csv: Path | None = None
    image_size: int = Field(224, ge=16, le=2048)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    #: Share of all images held out as the test set, which a search never sees (patient-level,
    #: stratified, carved before validation); 0 keeps none (a source may give one: use: test)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    #: Cross-validation: K patient-grouped, grade-stratified folds of the non-test images; the
    #: validation split is fold ``cv_fold`` (``val_fraction`` is then not used). A study's
    #: finalist stage retrains on every fold and pools the out-of-fold predictions.
    cv_folds: int | None = Field(None, ge=2, le=20)
    cv_fold: int = Field(0, ge=0, le=19)
    seed: Seed = 0
    skip_bad: bool = False
    drop_val_duplicates: bool = False
    cache: Literal["auto", "memory", "disk"] = "auto"
    cache_dir: Path | None = None
    cache_max_gb: float = Field(4.0, gt=0)
    num_workers: int = Field(0, ge=0, le=256)
    progressive: list[ResizePhase] = Field(default_factory=list)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    synthetic: SynthConfig = Field(default_factory=SynthConfig)

    @model_validator(mode="after")
    def _room_for_training(self) -> DataConfig:
        if self.cv_folds is not None and self.cv_fold >= self.cv_folds:
            raise KeyedValueError(
                "data.cv_fold",
                f"must be one of the folds 0..{self.cv_folds - 1} of data.cv_folds, "
                f"got {self.cv_fold}",
            )
        if self.cv_folds is not None and any(s.use == "val" for s in self.sources):
            raise KeyedValueError(
                "data.cv_folds",
                "the folds make the validation split; drop use: val from data.sources, or "
                "drop data.cv_folds",
            )
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must leave at least 10% for training, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self

    @field_validator("progressive")
    @classmethod
    def _phases_ordered(cls, phases: list[ResizePhase]) -> list[ResizePhase]:
        if phases and phases[0].epoch != 0:
            raise ValueError(f"the first phase must start at epoch 0, got {phases[0].epoch}")
        epochs = [p.epoch for p in phases]
        if epochs != sorted(set(epochs)):
            raise ValueError(f"phase epochs must be strictly increasing, got {epochs}")
        return phases

    def sizes(self) -> list[int]:
        """Every image size the run trains or evaluates at."""
        return sorted({self.image_size, *(p.size for p in self.progressive)})

    def size_at(self, epoch: int) -> int:
        """Training image size at a 0-based epoch."""
        size = self.image_size
        for phase in self.progressive:
            if epoch >= phase.epoch:
                size = phase.size
        return size


#: Named sets of LoRA target modules (suffixes of timm module names, as peft matches them).
LORA_TARGET_PRESETS = {
    "qkv": ["attn.qkv"],
    "attention": ["attn.qkv", "attn.proj"],
    "attention_mlp": ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
}
LoraTargetPreset = Literal["qkv", "attention", "attention_mlp"]


class LoraConfig(Section):
    """LoRA adapters (peft) on a frozen backbone: only the adapters and the classifier train.

    ``target_modules`` is a preset name (``qkv``, ``attention``, ``attention_mlp``) or a list
    of module-name suffixes such as ``[attn.qkv, mlp.fc1]``.
    """

    r: int = Field(8, ge=1, le=512)
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: LoraTargetPreset | Annotated[list[str], Field(min_length=1)] = "attention"

    def target_names(self) -> list[str]:
        """The module-name suffixes the adapters go on."""
        if isinstance(self.target_modules, str):
            return list(LORA_TARGET_PRESETS[self.target_modules])
        return list(self.target_modules)


class ModelConfig(Section):
    """A timm model; ``pretrained`` is ``false``, a local weights file, or a packaged set of
    ImageNet weights by name (``efficientnet-lite0``..``2``); never a hub download.

    With ``lora`` set, the pretrained weights stay frozen and LoRA adapters train instead.
    """

    name: str = "resnet10t"
    pretrained: Literal[False] | Path = False
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    lora: LoraConfig | None = None
    #: What the last layer predicts (see train/heads.py): 5 grade logits, the grade as one
    #: number (regression), or 4 cumulative "grade > k" logits (ordinal)
    head: Literal["classification", "regression", "ordinal"] = "classification"
    #: Fixed grade thresholds of a regression or ordinal head's score (4, increasing);
    #: unset, they are fitted on validation every epoch to maximise QWK
    thresholds: list[float] | None = None
    #: Further ``timm.create_model`` arguments, e.g. ``{embed_dim: 64, depth: 2}``.
    kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)

    @field_validator("pretrained", mode="before")
    @classmethod
    def _no_hub(cls, value: object) -> object:
        if value is True:
            raise ValueError(
                "true would download from a model hub; give a local weights file path or false"
            )
        if value in (None, "false", "none", ""):
            return False
        return value

    @field_validator("thresholds")
    @classmethod
    def _four_increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 4 or sorted(value) != value):
            raise ValueError(f"needs 4 increasing numbers (grade 0|1|2|3|4 cuts), got {value}")
        return value


ClassWeightPreset = Literal["none", "inverse", "inverse_sqrt"]


class LossConfig(Section):
    """Cross-entropy, or focal loss ``alpha_t * (1 - p_t)**gamma * CE`` (Lin et al. 2017),
    with class weights.

    ``alpha`` is Lin et al.'s per-class alpha_t: five numbers (one per grade), or derived from
    the training grade frequencies (``inverse``, ``inverse_sqrt``, normalised to mean 1 over
    the training images, like the class-weight presets). A single number is one alpha for
    every grade: a constant scale of the loss, which Adam and AdamW normalise away, so it is
    not worth searching.
    """

    name: Literal["ce", "focal"] = "ce"
    alpha: PositiveFloat | list[PositiveFloat] | Literal["inverse", "inverse_sqrt"] = 1.0
    gamma: NonNegFloat = 2.0
    class_weights: ClassWeightPreset | list[PositiveFloat] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @field_validator("class_weights", "alpha")
    @classmethod
    def _five_weights(cls, value: object) -> object:
        if isinstance(value, list) and len(value) != NUM_CLASSES:
            raise ValueError(f"needs {NUM_CLASSES} weights (one per grade 0-4), got {len(value)}")
        return value


class AugmentConfig(Section):
    """Random augmentation (albumentations) and MixUp/CutMix (timm)."""

    strength: float = Field(1.0, ge=0, le=2)
    hflip: bool = True
    vflip: bool = True
    mixup_alpha: NonNegFloat = 0.0
    cutmix_alpha: NonNegFloat = 0.0
    mix_prob: Fraction = 1.0
    switch_prob: Fraction = 0.5


class OptimConfig(Section):
    """Optimizer over two parameter groups, backbone (``lr * backbone_lr_mult``) and head, each
    split in a weight-decayed and an undecayed part (biases, norms) unless
    ``decay_norm_and_bias``."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.05
    backbone_lr_mult: float = Field(1.0, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    # as timm does: no weight decay on biases, normalisation weights (every 1-d tensor) and
    # the model's own no_weight_decay() set (position embeddings, class tokens)
    decay_norm_and_bias: bool = False


class ScheduleConfig(Section):
    """Warmup then a main schedule, stepped every optimizer step (see ``train/schedule.py``)."""

    name: Literal["none", "cosine", "cosine_restarts", "step", "plateau"] = "cosine"
    warmup_epochs: NonNegFloat = 0.0
    warmup_start_factor: Fraction = 0.1
    min_lr: NonNegFloat = 0.0
    t0: PositiveFloat = 5.0
    t_mult: float = Field(1.0, ge=1)
    step_epochs: PositiveFloat = 10.0
    gamma: float = Field(0.1, gt=0, le=1)
    plateau_patience: int = Field(2, ge=0)
    plateau_factor: float = Field(0.1, gt=0, lt=1)


class TrainConfig(Section):
    """Length, batching, early stopping and numerics of a run."""

    epochs: Epochs = 10
    batch_size: int = Field(32, ge=2, le=65_536)
    eval_batch_size: int | None = Field(None, ge=1, le=65_536)
    grad_accum: int = Field(1, ge=1, le=4096)
    patience: int | None = Field(None, ge=1, le=100_000)
    monitor: Literal[
        "accuracy", "balanced_accuracy", "qwk", "macro_f1", "referable_auc", "loss", "objective"
    ] = "qwk"
    # with monitor: objective, the study's objective (a study pins it into every trial)
    objective: ObjectiveConfig | None = None
    #: Keep epoch N as the run's result, whatever validation says, and stop there (the
    #: schedule stays planned for ``epochs``): a finalist's fold or seed run is scored at the
    #: epoch its search trial chose, not at an epoch chosen again on the data it is scored on
    select_epoch: int | None = Field(None, ge=1, le=100_000)
    seed: Seed = 0
    #: Mixed precision: true = bf16 autocast on a GPU that has it, else fp16 with a gradient
    #: scaler, and fp32 on the CPU; "bf16" also on the CPU; "fp16" (GPU only); false = fp32
    amp: bool | Literal["bf16", "fp16"] = True
    #: torch.compile the model for training (first epoch pays for the compilation)
    compile: bool = False
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    # the decay ramps up over the first steps (timm's ModelEmaV3 warmup): without it, an
    # early ASHA rung compares high-decay trials on weights still close to the random init
    ema_warmup: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=1024)
    channels_last: bool = True
    grad_clip: float | None = Field(None, gt=0)


class Pinned(Section):
    """What a recipe exported from a study trial was trained with (``drsearch export``)."""

    seed: Seed
    versions: dict[str, str]
    data_fingerprint: dict[str, Any]
    git_commit: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    #: What ``drsearch evaluate`` chose on validation (operating-point thresholds, grade
    #: thresholds, temperature) and measured on the held-out test set; evaluating this recipe
    #: again uses these choices instead of refitting them
    evaluation: dict[str, Any] | None = None


class Recipe(Section):
    """A complete training recipe."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pinned: Pinned | None = None

    @model_validator(mode="after")
    def _fits_in_training(self) -> Recipe:
        epochs = self.train.epochs
        if self.schedule.warmup_epochs >= epochs:
            raise _at(
                "schedule.warmup_epochs",
                f"warmup must end before training does: must be < train.epochs ({epochs}), "
                f"got {self.schedule.warmup_epochs}",
            )
        if self.train.select_epoch is not None and self.train.select_epoch > epochs:
            raise _at(
                "train.select_epoch",
                f"must be <= train.epochs ({epochs}), got {self.train.select_epoch}",
            )
        if self.model.head != "classification" and self.loss.name == "focal":
            raise _at(
                "loss.name",
                f"focal is for model.head: classification; a {self.model.head} head has its "
                "own loss (see train/heads.py): use loss.name: ce",
            )
        if self.model.head == "classification" and self.model.thresholds is not None:
            raise _at("model.thresholds", "only a regression or ordinal head has thresholds")
        if self.train.monitor == "objective" and self.train.objective is None:
            raise _at(
                "train.objective",
                "train.monitor: objective needs the objective: set train.objective "
                "(metric and constraints, as in a study file)",
            )
        cosine = self.schedule.name in ("cosine", "cosine_restarts")
        if cosine and self.schedule.min_lr >= self.optim.lr:
            raise _at(
                "schedule.min_lr",
                f"must be < optim.lr ({self.optim.lr}) for a {self.schedule.name} decay, "
                f"got {self.schedule.min_lr}",
            )
        for i, phase in enumerate(self.data.progressive):
            if phase.epoch >= epochs:
                raise _at(
                    f"data.progressive.{i}.epoch",
                    f"phase starts after training ends: must be < train.epochs ({epochs}), "
                    f"got {phase.epoch}",
                )
        mixing = self.augment.mixup_alpha > 0 or self.augment.cutmix_alpha > 0
        if mixing and self.train.batch_size % 2:
            raise _at(
                "train.batch_size",
                f"MixUp/CutMix pair images, so it must be even, got {self.train.batch_size}",
            )
        names = [s.name or s.kind for s in self.data.sources]
        if len(names) != len(set(names)):
            raise _at("data.sources", f"source names must differ (set name:), got {names}")
        for i, source in enumerate(self.data.sources):
            if source.kind == "csv" and source.csv is None:
                raise _at(f"data.sources.{i}.csv", "kind 'csv' needs the label file: set csv")
        if self.data.kind == "csv" and self.data.csv is None and not self.data.sources:
            raise _at("data.csv", "data.kind 'csv' needs the label file: set data.csv")
        return self


class KeyedValueError(ValueError):
    """A cross-field error that knows which key path it is about."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _at(path: str, message: str) -> KeyedValueError:
    return KeyedValueError(path, message)
