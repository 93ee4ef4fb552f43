"""A stored study's tracked runs brought in line with it outside a run (``drsearch sync``,
``drsearch report``): the study's and, once its finalist stage has run, its confirmation
study's (``<name>-confirm``, tracked in the same store)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from drsearch.config.study import LoadedStudy
from drsearch.search.tracking.coordinator import Followed, open_tracking
from drsearch.search.tracking.reconcile import Fix

#: One backend of one study: the study's name, the backend's, where (secrets masked), and
#: what was fixed or why it could not be (the ledger keeps it owed).
Synced = tuple[str, str, str, "list[Fix] | str"]


def sync_study(
    loaded: LoadedStudy, source: Path | str, warn: Callable[[str], None], quiet: bool = True
) -> list[Synced]:
    """Reconcile every backend the study (and its confirmation study, when there is one)
    tracks in with the stored study, under its lock as runners do. ``[]``: it tracks in
    nothing. A study not run yet is a one-line error (``open_existing``)."""
    import optuna

    from drsearch.search.database import make_storage, open_existing
    from drsearch.search.selection import companion_config
    from drsearch.search.tracking.common import mlflow_uri

    if mlflow_uri(loaded) is None and loaded.config.tracking.wandb is None:
        return []
    out = _sync(loaded, open_existing(loaded.config, source), warn, quiet)
    confirm = companion_config(loaded.config)
    try:
        companion = optuna.load_study(
            study_name=confirm.name, storage=make_storage(confirm.storage_url())
        )
    except KeyError:  # no finalist stage has run
        return out
    companion_loaded = LoadedStudy(
        loaded.path, confirm, loaded.recipe, loaded.space, smoke=loaded.smoke, companion=True
    )
    return out + _sync(companion_loaded, companion, warn, quiet)


def _sync(
    loaded: LoadedStudy, study: Any, warn: Callable[[str], None], quiet: bool
) -> list[Synced]:
    from drsearch.search.database import StudyLock
    from drsearch.search.store import UUID_ATTR

    uuid = study._storage.get_study_system_attrs(study._study_id).get(UUID_ATTR)
    if uuid is None:  # not a study drsearch ran
        return []
    cfg = loaded.config
    followed = Followed(study, str(uuid), StudyLock(cfg.storage_url(), cfg.name))
    tracking = open_tracking(loaded, followed, None, warn)
    if tracking is None:
        return []
    results = tracking.sync(quiet=quiet)
    return [(cfg.name, f.name, f.where, results[f.name]) for f in tracking.feeds]
