"""What a study means, stored with it: a continuation under another definition is refused.

A study's trials are ranked by its objective, drawn from its space, trained by its recipe and
pruned by its pruner. Continue it with any of those changed and the old trials are re-ranked
under a new rule beside new ones trained another way (and under GPSampler a changed
constraint fails every later trial). The definition is stored with the study when it is
created; a run with another one is refused in one line naming what changed, unless the user
accepts it (``--accept-changes``), which is recorded in the study.

Where things are on disk (data and weights paths, caches) and how a run uses the machine
(threads, device, workers) are not part of the definition: the same study may run from
another folder or machine.
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


def definition(loaded: LoadedStudy) -> dict[str, Any]:
    """The study's definition as flat ``section.key -> value`` pairs."""
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
    return json.loads(json.dumps(flat, sort_keys=True))  # as stored: JSON values


def digest(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key that differs (added or removed keys included)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(none)"), new.get(key, "(none)")
        if a != b:
            out.append(f"{key}: {a} -> {b}")
    return out


def check_definition(
    storage: Any, study_id: int, loaded: LoadedStudy, accept: bool, has_ranked: bool
) -> list[str]:
    """Store the definition of a new study; refuse a continuation under another one unless
    ``accept`` (then record what changed, and store the new one). ``has_ranked``: the study
    has trials the change would re-rank (complete, pruned or paused); with none (a study whose
    trials all failed, say on a typo the user has since fixed) the change is taken and
    recorded. Returns the changes taken (empty when none)."""
    new = definition(loaded)
    attrs = storage.get_study_system_attrs(study_id)
    stored = attrs.get(DEFINITION_ATTR)
    if stored is None:
        storage.set_study_system_attr(study_id, DEFINITION_ATTR, new)
        return []
    changed = changes(stored, new)
    if not changed:
        return []
    if has_ranked and not accept:
        more = f"; and {len(changed) - 4} more" if len(changed) > 4 else ""
        shown = "; ".join(changed[:4]) + more
        raise ConfigError(
            f"{loaded.path}: study {loaded.config.name} was created with another definition "
            f"({shown}): its trials would be re-ranked beside trials of another kind; start a "
            "new study (another name or run_root), restore the study file, or continue it "
            "anyway with --accept-changes (recorded in the study)"
        )
    log = list(attrs.get(ACCEPTED_ATTR, []))
    log.append(
        {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from": digest(stored), "to": digest(new),
         "changes": changed, "why": "--accept-changes" if has_ranked else "no trial ranked yet"}
    )  # fmt: skip
    storage.set_study_system_attr(study_id, ACCEPTED_ATTR, log)
    storage.set_study_system_attr(study_id, DEFINITION_ATTR, new)
    return changed
