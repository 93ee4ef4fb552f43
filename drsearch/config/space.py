"""Search-space files -> Optuna distributions, and sampled parameters -> recipes.

A search space is a YAML mapping from dotted recipe keys to distributions::

    optim.lr:            {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    train.batch_size:    {type: categorical, choices: [16, 32]}
    schedule.name:       {type: categorical, choices: [none, cosine, cosine_restarts]}
    schedule.t0:         {type: int, low: 1, high: 4, when: {schedule.name: cosine_restarts}}
    loss.class_weights.3: {type: float, low: 1, high: 8}   # grade 3 (severe NPDR) only

Keys are checked against the recipe schema when the file loads (a list element is addressed
by its index), and so are the bounds and choices. A parameter with ``when`` is sampled only
if every named key (a parameter above it, or a recipe key) has one of the given values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from drsearch import NUM_CLASSES
from drsearch.config.loading import field_annotation, parse_config, read_yaml
from drsearch.config.recipe import KeyedValueError, Recipe, Section
from drsearch.errors import ConfigError
from drsearch.io import get_dotted

if TYPE_CHECKING:
    import optuna

Scalar = Union[bool, int, float, str, None]  # noqa: UP007 - pydantic needs the runtime union


class _Param(Section):
    when: dict[str, Scalar | list[Scalar]] | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    def extremes(self) -> list[Any]:
        return list(self.choices)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)


_PARAM_TYPES: dict[str, type[FloatParam | IntParam | CategoricalParam]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"empty range: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined")


SearchSpace = dict[str, FloatParam | IntParam | CategoricalParam]


#: Keys a search may not touch, and why: they define the data every trial is judged on, or
#: the rule that judges it, so trials searched over them are not comparable.
FIXED_KEYS = {
    "data.kind": "it picks the images: trials would be judged on different images",
    "data.root": "it picks the images: trials would be judged on different images",
    "data.csv": "it picks the images: trials would be judged on different images",
    "data.sources": "they pick the images and their roles: trials would be judged on "
    "different images",
    "data.drop_val_duplicates": "it changes the validation images",
    "data.skip_bad": "it changes which images are judged",
    "data.seed": "it draws the validation split: trials would be judged on different images",
    "data.val_fraction": "it sizes the validation split: trials would be judged on different "
    "images",
    "data.test_fraction": "it carves the held-out test set: a search must never move it",
    "data.cv_folds": "it makes the folds: trials would be judged on different images",
    "data.cv_fold": "it picks the validation fold: trials would be judged on different images",
    "train.monitor": "a study pins it to its objective, so every trial's best epoch is chosen "
    "on what the study ranks by",
    "train.objective": "a study pins its own objective into every trial",
    "train.select_epoch": "the finalist stage sets it",
}


def load_search_space(path: Path, base: Recipe) -> SearchSpace:
    """Read and check a search-space file against the recipe schema and the base recipe."""
    space: SearchSpace = {
        str(key): _parse_param(path, str(key), value) for key, value in read_yaml(path).items()
    }
    if not space:
        raise ConfigError(f"{path}: the search space is empty; add at least one parameter")
    for key in space:
        fixed = next((k for k in FIXED_KEYS if key == k or key.startswith(k + ".")), None)
        if fixed is not None:
            raise ConfigError(
                f"{path}: {key}: may not be searched ({FIXED_KEYS[fixed]}); set it in the "
                "recipe or the study's overrides instead"
            )
    flat = base.model_dump(mode="json")
    for key, param in space.items():
        where = f"{path}: {key}"
        annotation = field_annotation(key, where)
        _check_parent_in_base(flat, key, where)
        for value in param.extremes():
            _check_value(annotation, value, f"{where}: {value!r}")
        for cond_key in param.when or {}:
            if cond_key not in space or list(space).index(cond_key) >= list(space).index(key):
                field_annotation(cond_key, f"{where}: when {cond_key}")
        if (
            ".class_weights." in f".{key}"
            and isinstance(base.loss.class_weights, str)
            and (base.loss.class_weights != "none")
        ):
            raise ConfigError(
                f"{where}: the recipe's loss.class_weights is the preset "
                f"{base.loss.class_weights!r}; set it to a list of 5 weights to search one grade"
            )
    return space


def _check_parent_in_base(flat: dict[str, Any], key: str, where: str) -> None:
    """A searched key must sit in a section (or list element) the base recipe has."""
    data: Any = flat
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(data, list):
            if int(part) >= len(data):
                raise ConfigError(
                    f"{where}: the recipe's {'.'.join(parts[:i])} has {len(data)} entries, "
                    f"so there is no {here}; add it to the recipe"
                )
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
            if data is None:
                raise ConfigError(
                    f"{where}: the recipe has no {here}; set {here} in the recipe to search "
                    "inside it"
                )
        else:
            return  # e.g. a class-weight preset, expanded to five weights when sampled


def _parse_param(path: Path, key: str, raw: Any) -> FloatParam | IntParam | CategoricalParam:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: {key}: must be a mapping like {{type: float, low: 0.1, high: 1.0}}, "
            f"got {raw!r}"
        )
    cls = _PARAM_TYPES.get(str(raw.get("type")))
    if cls is None:
        raise ConfigError(
            f"{path}: {key}: type must be one of {', '.join(_PARAM_TYPES)}, got {raw.get('type')!r}"
        )
    return parse_config(cls, raw, f"{path}: {key}")


def _check_value(annotation: Any, value: Any, where: str) -> None:
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ConfigError(f"{where} is not a valid value for this key: {reason}") from None


def sample(trial: optuna.Trial, space: SearchSpace, base: Recipe) -> dict[str, Any]:
    """Ask the trial for every active parameter, in file order."""
    params: dict[str, Any] = {}
    flat = base.model_dump(mode="json")
    for key, param in space.items():
        if not _active(param, params, flat):
            continue
        params[key] = param.suggest(trial, key)
    return params


def _active(param: _Param, params: dict[str, Any], flat: dict[str, Any]) -> bool:
    for key, wanted in (param.when or {}).items():
        value = params[key] if key in params else get_dotted(flat, key)
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if value not in allowed:
            return False
    return True


def apply_params(base: Recipe, params: dict[str, Any]) -> dict[str, Any]:
    """The base recipe as a plain dict with every sampled value written at its key."""
    data = base.model_dump(mode="json")
    for key, value in params.items():
        _set(data, key.split("."), value)
    return data


def _set(data: Any, parts: list[str], value: Any) -> None:
    *head, last = parts
    for i, part in enumerate(head):
        nxt = head[i + 1] if i + 1 < len(head) else last
        child = data[int(part)] if isinstance(data, list) else data.get(part)
        if nxt.isdigit() and not isinstance(child, list):
            child = [1.0] * NUM_CLASSES  # a preset/"none" weight vector becomes all ones
            data[part] = child
        data = child
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


def trial_recipe(base: Recipe, params: dict[str, Any], source: str) -> Recipe:
    """The recipe a trial trains: base plus params, validated as a whole."""
    return parse_config(Recipe, apply_params(base, params), source)


__all__ = [
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "KeyedValueError",
    "SearchSpace",
    "apply_params",
    "field_annotation",
    "load_search_space",
    "sample",
    "trial_recipe",
]
