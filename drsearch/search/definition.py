"""What a study means, stored with it: a continuation under another definition is refused.

A study's trials are ranked by its objective, drawn from its space, trained by its recipe and
pruned by its pruner. Continue it with any of those changed and the old trials are re-ranked
under a new rule beside new ones trained another way (and under GPSampler a changed
constraint fails every later trial). The definition is stored with the study when it is
created; a run with another one is refused in one line naming what changed, unless the user
accepts it (``--accept-changes``), which is recorded in the study.

The data are part of it by content: the fingerprint the trainer records for a run (image ids,
labels and file sizes, the validation and test ids; ``listed_fingerprint``) of the search's
split, as the data are listed before the first trial, under the key ``data``. Continued on
other data, resumed trials would fail, new ones would be ranked beside old ones trained on
other images, and the finalists would be retrained on images they were not chosen on. A study
begun before the data were stored gets them stored on its next run, without refusal.

Where things are on disk (data and weights paths, caches) and how a run uses the machine
(threads, device, workers) are not part of the definition: the same study may run from
another folder or machine, and a copy of its data in another folder is the same data.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import PurePath
from typing import Any

from drsearch.config.study import LoadedStudy
from drsearch.errors import ConfigError
from drsearch.io import flatten

DEFINITION_ATTR = "drsearch:definition"
ACCEPTED_ATTR = "drsearch:definition_changes"
#: The definition's key for its data (``data_summary``).
DATA_KEY = "data"

#: Recipe keys that say where or how a run happens, not what it is.
_RUNTIME = {
    "data.root",
    "data.csv",
    "data.cache",
    "data.cache_dir",
    "data.cache_max_gb",
    "data.num_workers",
    "train.device",
    "train.threads",
    "train.compile",
    "train.channels_last",
    "train.eval_batch_size",
}


def definition(loaded: LoadedStudy, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study's definition as flat ``section.key -> value`` pairs; with ``data`` (the data's
    ``listed_fingerprint``), their summary under ``data`` (``data_summary``)."""
    cfg = loaded.config
    recipe = {
        k: v
        for k, v in flatten(loaded.recipe.model_dump(mode="json")).items()
        if k not in _RUNTIME
        and not k.startswith("train.objective")  # the study's own objective, pinned in
        and not (k.startswith("data.sources.") and k.endswith((".root", ".csv")))
    }
    pretrained = recipe.get("model.pretrained")
    if isinstance(pretrained, str):  # a weights file: its name, wherever it lies
        recipe["model.pretrained"] = PurePath(pretrained).name
    parts = {
        "objective": cfg.objective.model_dump(mode="json"),
        "search_space": {k: p.model_dump(mode="json") for k, p in loaded.space.items()},
        "pruner": cfg.pruner.model_dump(mode="json"),
    }
    flat = {f"recipe.{k}": v for k, v in recipe.items()}
    for name, part in parts.items():
        flat.update(flatten(part, name))
    if data:
        flat[DATA_KEY] = data_summary(data)
    return json.loads(json.dumps(flat, sort_keys=True))  # as stored: JSON values


def data_summary(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """What a study stores of its data: one short fingerprint of the image list, the split and
    the test ids, and the counts that say how two differ."""
    parts = [str(fingerprint.get(k, "")) for k in ("images_sha256", "split_sha256", "test_sha256")]
    return {
        "fingerprint": hashlib.sha256("|".join(parts).encode()).hexdigest()[:12],
        "images_sha256": fingerprint.get("images_sha256"),
        "split_sha256": fingerprint.get("split_sha256"),
        "test_sha256": fingerprint.get("test_sha256"),
        "n_images": fingerprint.get("n_images"),
        "n_val": fingerprint.get("n_val"),
        "n_test": fingerprint.get("n_test"),
        "grade_counts": fingerprint.get("grade_counts"),
    }


def data_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How two stored data summaries differ, in words: ``fingerprint a -> b: ...``."""
    said = []
    if old.get("n_images") != new.get("n_images"):
        said.append(f"{old.get('n_images')} -> {new.get('n_images')} images")
    if old.get("grade_counts") != new.get("grade_counts"):
        said.append(f"grade counts {old.get('grade_counts')} -> {new.get('grade_counts')}")
    if not said and old.get("images_sha256") != new.get("images_sha256"):
        said.append(f"{new.get('n_images')} images as before, other ids, labels or file sizes")
    if old.get("images_sha256") == new.get("images_sha256"):
        said.append("the same images")
    if old.get("split_sha256") != new.get("split_sha256"):
        said.append(f"another validation split ({old.get('n_val')} -> {new.get('n_val')} images)")
    if old.get("test_sha256") != new.get("test_sha256"):
        said.append(f"another held-out test set ({old.get('n_test')} -> {new.get('n_test')} ids)")
    return f"fingerprint {old.get('fingerprint')} -> {new.get('fingerprint')}: {', '.join(said)}"


def _data_key(loaded: LoadedStudy) -> str:
    """The recipe key that says where the data lie."""
    data = loaded.recipe.data
    return "data.sources" if data.sources else "data.csv" if data.kind == "csv" else "data.root"


def digest(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key that differs (added or removed keys included); the
    data first, in words (``data_change``)."""
    out = []
    a, b = old.get(DATA_KEY), new.get(DATA_KEY)
    if a and b and a.get("fingerprint") != b.get("fingerprint"):
        out.append(f"{DATA_KEY}: {data_change(a, b)}")
    for key in sorted((set(old) | set(new)) - {DATA_KEY}):
        a, b = old.get(key, "(none)"), new.get(key, "(none)")
        if a != b:
            out.append(f"{key}: {a} -> {b}")
    return out


def check_definition(
    storage: Any,
    study_id: int,
    loaded: LoadedStudy,
    accept: bool,
    has_ranked: bool,
    data: dict[str, Any] | None = None,
) -> list[str]:
    """Store the definition of a new study; refuse a continuation under another one unless
    ``accept`` (then record what changed, and store the new one). ``has_ranked``: the study
    has trials the change would re-rank (complete, pruned or paused); with none (a study whose
    trials all failed, say on a typo the user has since fixed) the change is taken and
    recorded. ``data``: the fingerprint of the data as listed now (``None``: the stored data
    stand); a study stored without one gets it, unrefused. Returns the changes taken (empty
    when none)."""
    new = definition(loaded, data)
    attrs = storage.get_study_system_attrs(study_id)
    stored = attrs.get(DEFINITION_ATTR)
    if stored is None:
        storage.set_study_system_attr(study_id, DEFINITION_ATTR, new)
        return []
    if DATA_KEY in stored and DATA_KEY not in new:
        new[DATA_KEY] = stored[DATA_KEY]
    changed = changes(stored, new)
    if not changed:
        if new != stored:  # begun before its data were stored: stored now
            storage.set_study_system_attr(study_id, DEFINITION_ATTR, new)
        return []
    if has_ranked and not accept:
        raise ConfigError(_refusal(loaded, changed))
    log = list(attrs.get(ACCEPTED_ATTR, []))
    log.append(
        {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from": digest(stored), "to": digest(new),
         "changes": changed, "why": "--accept-changes" if has_ranked else "no trial ranked yet"}
    )  # fmt: skip
    storage.set_study_system_attr(study_id, ACCEPTED_ATTR, log)
    storage.set_study_system_attr(study_id, DEFINITION_ATTR, new)
    return changed


def _refusal(loaded: LoadedStudy, changed: list[str]) -> str:
    """The one line that refuses a continuation under ``changed``."""
    name, fix = (
        loaded.config.name,
        "continue it anyway with --accept-changes (recorded in the study)",
    )
    if len(changed) == 1 and changed[0].startswith(f"{DATA_KEY}: "):
        return (
            f"{loaded.path}: {_data_key(loaded)}: the data changed since study {name} began "
            f"({changed[0].removeprefix(f'{DATA_KEY}: ')}): its trials were trained and ranked "
            f"on other images; point {_data_key(loaded)} back at them, start a new study "
            f"(another name or run_root), or {fix}"
        )
    more = f"; and {len(changed) - 4} more" if len(changed) > 4 else ""
    return (
        f"{loaded.path}: study {name} was created with another definition "
        f"({'; '.join(changed[:4]) + more}): its trials would be re-ranked beside trials of "
        f"another kind; start a new study (another name or run_root), restore the study file, "
        f"or {fix}"
    )


def check_parent_data(
    storage: Any, parent: str, loaded: LoadedStudy, data: dict[str, Any] | None
) -> None:
    """A confirmation study (``loaded``) retrains its parent study's finalists on the parent's
    data: refused in one line when the data listed now are not those the parent stored (its
    finalists were chosen on other images); ``drsearch run --accept-changes`` on the parent
    records the change first. A parent stored without its data is not refused."""
    try:
        stored = storage.get_study_system_attrs(storage.get_study_id_from_name(parent))
    except KeyError:  # no such study (the caller found it first): nothing to compare
        return
    old = (stored.get(DEFINITION_ATTR) or {}).get(DATA_KEY)
    if not (data and old):
        return
    new = data_summary(data)
    if new["fingerprint"] != old.get("fingerprint"):
        raise ConfigError(
            f"{loaded.path}: {_data_key(loaded)}: the data changed since study {parent} began "
            f"({data_change(old, new)}): its finalists were chosen on other images; point "
            f"{_data_key(loaded)} back at them, or record the change with `drsearch run "
            f"{loaded.path} --accept-changes` first"
        )
