"""``fit(recipe, reporter)``: train one DR grader and return its metrics.

The search layer drives training only through ``reporter(epoch, metrics)``, called once per
finished epoch (1-based) after the epoch is checkpointed and logged. Raising ``StopTraining``
from it ends the run cleanly; any other exception propagates (e.g. a pruning signal).

On ``resume`` the checkpoint is the truth: training continues after the checkpoint's own
epoch, the log is reconciled to it (lines after it dropped, its own line restored from the
checkpoint if a kill came between the two writes), and the reporter is first called once for
every epoch already done, with ``record["replayed"] = True``, so it sees the whole curve.
A checkpoint trained with a different recipe or on different data is refused with a one-line
error, never loaded into the model (``drsearch.train.resume``).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drsearch.config.recipe import MONITOR_METRICS, Recipe
from drsearch.data.fingerprint import data_fingerprint
from drsearch.errors import ConfigError, NonFiniteLossError, TrainingError
from drsearch.train import checkpoint
from drsearch.train.augment import describe, make_mixup, train_pipeline
from drsearch.train.batches import (
    Normalizer,
    accumulation_group,
    epoch_seed,
    eval_batches,
    train_batches,
)
from drsearch.train.faults import fault_point
from drsearch.train.heads import (
    DEFAULT_THRESHOLDS,
    HeadLoss,
    decode,
    grade_score,
    head_loss,
    to_grades,
)
from drsearch.train.loss import (
    SoftTargetLoss,
    one_hot_smoothed,
    resolve_class_weights,
    resolve_focal_alpha,
)
from drsearch.train.metrics import compute_metrics
from drsearch.train.model import (
    autocast_dtype,
    build_model,
    build_optimizer,
    make_ema,
    normalization,
    parameter_counts,
)
from drsearch.train.outputs import RunFolder, installed_versions, to_jsonable
from drsearch.train.prepare import PreparedData, prepare_data
from drsearch.train.resume import check_resumable
from drsearch.train.schedule import LRController, StepPlan, steps_per_epoch
from drsearch.train.seam import FitResult, Progress, Reporter, StopTraining, _Silent


def fit(
    recipe: Recipe,
    reporter: Reporter | None = None,
    *,
    run_dir: Path,
    resume: bool = False,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``recipe`` into ``run_dir``; with ``resume``, continue from its last checkpoint."""
    started = time.perf_counter()
    progress = progress or _Silent()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    progress.status("reading and caching images")
    data = prepare_data(recipe.data, lambda done, total: progress.status(f"cached {done}/{total}"))
    folder = RunFolder(run_dir)
    folder.create()  # only once the data is known to be usable
    trainer = _Trainer(recipe, data, folder)
    history = trainer.restore() if resume else trainer.start()
    return trainer.run(history, reporter, progress, started)


def _device(recipe: Recipe) -> torch.device:
    if recipe.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device: cuda, but torch {torch.__version__} finds no CUDA GPU on this "
            "machine; set train.device: auto (GPU when there is one) or cpu"
        )
    return torch.device(recipe.train.device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Trainer:
    """The state of one run and the epoch loop over it."""

    def __init__(self, recipe: Recipe, data: PreparedData, folder: RunFolder) -> None:
        self.recipe, self.data, self.folder = recipe, data, folder
        self.device = _device(recipe)
        _seed_everything(recipe.train.seed)
        dynamic = len(recipe.data.sizes()) > 1
        self.model = build_model(recipe.model, recipe.data.image_size, dynamic).to(self.device)
        self.parameters = parameter_counts(self.model)
        if recipe.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalizer(
            *normalization(self.model), self.device, recipe.train.channels_last
        )
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.plan = StepPlan(steps_per_epoch(len(data.train_idx), recipe), recipe.train.epochs)
        self.lr = LRController(self.optimizer, recipe, self.plan)
        self.class_weights = resolve_class_weights(recipe.loss, data.labels("train"))
        self.focal_alpha = (
            resolve_focal_alpha(recipe.loss, data.labels("train"))
            if recipe.loss.name == "focal"
            else None
        )
        self.head = recipe.model.head
        criterion = (
            SoftTargetLoss(recipe.loss, self.class_weights, self.focal_alpha)
            if self.head == "classification"
            else HeadLoss(self.head, self.class_weights)
        )
        self.criterion = criterion.to(self.device)
        self.amp_dtype = autocast_dtype(recipe.train.amp, self.device)
        self.amp = self.amp_dtype is not None
        # a gradient scaler only for fp16 (bf16 has fp32's range)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # compiled for the training steps; the plain module holds the weights that are saved
        self.forward_model = torch.compile(self.model) if recipe.train.compile else self.model
        self.ema = (
            make_ema(self.model, recipe.train.ema_decay, recipe.train.ema_warmup)
            if recipe.train.ema
            else None
        )
        self.mixup = make_mixup(recipe)
        self.pipeline = train_pipeline(recipe.augment)
        mode = MONITOR_METRICS[recipe.train.monitor]
        self.higher_is_better = mode == "max"
        self.best_value: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.start_epoch = 0

    # -- starting and resuming ---------------------------------------------------------
    def start(self) -> list[dict[str, Any]]:
        self.folder.metrics_log.unlink(missing_ok=True)
        self.folder.write_config(self.recipe)
        self._write_run_info()
        from drsearch.data.split import write_split

        write_split(
            self.folder.root / "split.csv",
            self.data.records,
            self.data.train_idx,
            self.data.val_idx,
        )
        return []

    def restore(self) -> list[dict[str, Any]]:
        path = self.folder.checkpoints / checkpoint.LAST
        state = checkpoint.load(path)
        check_resumable(path, state, self.recipe, self.folder.root, self._data_fingerprint())
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state["lr"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        checkpoint.set_rng_state(state["rng"])
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.start_epoch = int(state["epoch"])
        record = json.loads(state["record"]) if state.get("record") else None
        history = self.folder.reconcile_epochs(self.start_epoch, record)
        self.folder.record_resume(self.start_epoch, self.recipe)
        return history

    def _data_fingerprint(self) -> dict[str, Any]:
        return data_fingerprint(
            self.data.records, self.data.train_idx, self.data.val_idx, self.data.test_ids
        )

    def _write_run_info(self) -> None:
        self.folder.write_json(
            "run.json",
            {
                "n_train": len(self.data.train_idx),
                "n_val": len(self.data.val_idx),
                "train_grade_counts": np.bincount(self.data.labels("train"), minlength=5),
                "val_grade_counts": np.bincount(self.data.labels("val"), minlength=5),
                "skipped": dict(self.data.skipped.reasons),
                "val_duplicates_of_train": self.data.val_duplicates,
                "skipped_examples": self.data.skipped.examples,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "class_weights": self.class_weights,
                "focal_alpha": self.focal_alpha,
                "augmentations": describe(self.pipeline),
                "device": str(self.device),
                "parameters": self.parameters,
                "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp else False,
                "image_cache": self.data.cache.location,
                "data_fingerprint": self._data_fingerprint(),
                "versions": installed_versions(),
                "data_roots": [str(r) for r in _data_roots(self.recipe)],
            },
        )

    # -- the loop ------------------------------------------------------------------------
    def run(
        self,
        history: list[dict[str, Any]],
        reporter: Reporter | None,
        progress: Progress,
        started: float,
    ) -> FitResult:
        stopped = "completed"
        try:
            for record in history:  # a resumed run: the reporter sees the whole curve
                if reporter is not None:
                    reporter(record["epoch"], {**record, "replayed": True})
        except StopTraining:
            stopped = "reporter"
        patience = self.recipe.train.patience
        # a resumed run that had run out of patience where it was paused (a rung) or cut
        if history and stopped == "completed" and patience is not None:
            stopped = "early_stopping" if self.bad_epochs >= patience else stopped
        # with train.select_epoch the run ends at that epoch (a resume past it trains nothing)
        end = self.recipe.train.select_epoch or self.recipe.train.epochs
        epochs = range(self.start_epoch, end) if stopped == "completed" else range(0)
        for epoch in epochs:
            record = self._epoch(epoch, progress)
            history.append(record)
            progress.end_epoch(record)
            try:
                if reporter is not None:
                    reporter(epoch + 1, record)
            except StopTraining:
                stopped = "reporter"
                break
            if epoch + 1 == self.recipe.train.select_epoch:
                stopped = "select_epoch"
            patience = self.recipe.train.patience
            if patience is not None and self.bad_epochs >= patience:
                stopped = "early_stopping"
                break
        if not history:
            raise TrainingError(f"{self.folder.root}: the run has no finished epoch to report")
        best = next((r for r in history if r["epoch"] == self.best_epoch), history[-1])
        return FitResult(
            run_dir=self.folder.root,
            best_epoch=self.best_epoch,
            best=best["val"],
            last=history[-1]["val"],
            epochs_completed=len(history),
            stopped=stopped,
            wall_seconds=time.perf_counter() - started,
            history=history,
            parameters=self.parameters,
            skipped=dict(self.data.skipped.reasons),
        )

    def _epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        t0 = time.perf_counter()
        _seed_everything(epoch_seed(self.recipe.train.seed, epoch))
        lr_first = self.lr.group_lrs()
        size = self.recipe.data.size_at(epoch)
        train = self._train_epoch(epoch, size, progress)
        lr_last = self._last_step_lrs()
        train_seconds = time.perf_counter() - t0
        outputs, val_loss = self._predict()
        labels = self.data.labels("val")
        probs, preds, thresholds = self._decode(outputs, labels)
        val = compute_metrics(labels, probs, preds) | {"loss": val_loss}
        if thresholds is not None:  # a regression or ordinal head's cuts of its score
            val["thresholds"] = thresholds
        objective = self.recipe.train.objective
        if objective is not None:  # what a study ranks by, scored on every epoch alike
            val["objective"] = objective.score(val).value
        self.lr.end_epoch(val[self.recipe.train.monitor], self.higher_is_better)
        improved = self._track_best(epoch + 1, val[self.recipe.train.monitor])
        record = {
            "epoch": epoch + 1,
            "image_size": size,
            "augmentations": describe(self.pipeline),
            "train": train,
            "val": val,
            "lr": lr_last,
            "lr_first": lr_first,
            "best_epoch": self.best_epoch,
            "trainable_params": self.parameters["trainable"],
            "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - t0,
        }
        if improved:
            self._save_best(record, probs, preds)
        self._save_last(record)
        fault_point("after_checkpoint", epoch + 1, self.folder.root)
        self.folder.append_epoch(record)
        fault_point("after_record", epoch + 1, self.folder.root)
        return record

    def _train_epoch(self, epoch: int, size: int, progress: Progress) -> dict[str, float]:
        cfg = self.recipe.train
        batches = train_batches(
            self.data.split("train", size),
            cfg.batch_size,
            cfg.seed,
            epoch,
            self.pipeline,
            self.recipe.data.num_workers,
        )
        progress.start_epoch(epoch + 1, cfg.epochs, len(batches))
        self.model.train()
        loss_sum = correct = seen = 0.0
        for k, (images, labels) in enumerate(batches):
            loss, logits = self._forward(images, labels)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss.item()} at epoch {epoch + 1}, batch {k + 1}; "
                    "lower optim.lr or set train.grad_clip"
                )
            group, last = accumulation_group(k, len(batches), cfg.grad_accum)
            self.scaler.scale(loss / group).backward()
            if last:
                self._optimizer_step()
            loss_sum += loss.item() * len(labels)
            correct += (self._train_grades(logits) == labels).sum().item()
            seen += len(labels)
            progress.advance(loss.item())
        return {"loss": loss_sum / seen, "accuracy": correct / seen, "images": int(seen)}

    def _forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(images)
        y = labels.to(self.device)
        if self.mixup is not None:
            x, targets = self.mixup(x, y)
        else:
            targets = one_hot_smoothed(y, self.recipe.loss.label_smoothing)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = self.forward_model(x)
        return self.criterion(logits, targets), logits.detach()

    def _optimizer_step(self) -> None:
        if self.recipe.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.lr.step_count)
        self._last_lrs = self.lr.group_lrs()
        self.lr.step()

    def _last_step_lrs(self) -> dict[str, float]:
        return getattr(self, "_last_lrs", self.lr.group_lrs())

    @torch.no_grad()
    def _predict(self) -> tuple[np.ndarray, float]:
        """The model's raw outputs on validation (N x outputs of the head) and the mean loss."""
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        cfg = self.recipe.train
        split = self.data.split("val", self.recipe.data.image_size)
        outputs, loss_sum = [], 0.0
        for images, labels in eval_batches(
            split, cfg.eval_batch_size or 2 * cfg.batch_size, self.recipe.data.num_workers
        ):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits = model(self.normalize(images)).float()
            y = labels.to(self.device)
            if self.head == "classification":
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            else:  # the head's own loss, unweighted
                loss_sum += head_loss(
                    self.head, logits, one_hot_smoothed(y, 0.0), None
                ).item() * len(y)
            outputs.append(logits.cpu().numpy())
        return np.concatenate(outputs).astype(np.float64), loss_sum / len(split.indices)

    def _decode(
        self, outputs: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[float] | None]:
        """Per-grade probabilities, predicted grades and thresholds (``heads.decode``)."""
        return decode(self.head, outputs, labels, self.recipe.model.thresholds)

    def _train_grades(self, logits: torch.Tensor) -> torch.Tensor:
        """Grades of a training batch's outputs (a regression or ordinal head: cut at the
        recipe's thresholds, or the midpoints)."""
        if self.head == "classification":
            return logits.argmax(1).cpu()
        score = grade_score(self.head, logits.float().cpu().numpy())
        cuts = self.recipe.model.thresholds or DEFAULT_THRESHOLDS
        return torch.from_numpy(to_grades(score, cuts))

    # -- best and last state -----------------------------------------------------------------
    def _track_best(self, epoch: int, value: float | None) -> bool:
        select = self.recipe.train.select_epoch
        if select is not None:  # the epoch is fixed: each epoch up to it is "best so far"
            if epoch <= select:
                self.best_value, self.best_epoch = value, epoch
            return epoch <= select
        if value is None or math.isnan(value):
            self.bad_epochs += 1
            if self.best_epoch == 0:
                self.best_epoch = epoch
                return True
            return False
        better = self.best_value is None or (
            value > self.best_value if self.higher_is_better else value < self.best_value
        )
        if better:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    def _save_best(self, record: dict[str, Any], probs: np.ndarray, preds: np.ndarray) -> None:
        labels = self.data.labels("val")
        self.folder.write_predictions(self.data.ids("val"), labels, probs, preds)
        self.folder.write_json(
            "metrics.json",
            {
                "epoch": record["epoch"],
                **record["val"],
                "train": record["train"],
                "lr": record["lr"],
            },
        )
        weights = (self.ema.module if self.ema is not None else self.model).state_dict()
        checkpoint.atomic_save(
            {"model": weights, "epoch": record["epoch"]}, self.folder.checkpoints / checkpoint.BEST
        )

    def _save_last(self, record: dict[str, Any]) -> None:
        state = {
            "epoch": record["epoch"],
            "record": json.dumps(to_jsonable(record)),
            "recipe": json.dumps(self.recipe.model_dump(mode="json")),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": self.lr.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": checkpoint.rng_state(),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }
        checkpoint.atomic_save(state, self.folder.checkpoints / checkpoint.LAST)


def _data_roots(recipe: Recipe) -> list[Path]:
    """Where the run read its images (absolute when a study resolved them)."""
    data = recipe.data
    return [s.root for s in data.sources] if data.sources else [data.root]
