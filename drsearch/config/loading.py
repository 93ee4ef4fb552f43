"""Reading config files: YAML -> dict -> pydantic model, with one-line errors.

Errors name the file, the dotted key path and what is allowed, e.g.
``recipes/demo.yaml: optim.lr: must be > 0, got -0.1``.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

from drsearch import NUM_CLASSES
from drsearch.config.recipe import NAMED_PRETRAINED, KeyedValueError, Recipe
from drsearch.errors import ConfigError
from drsearch.io import set_dotted

M = TypeVar("M", bound=BaseModel)


#: Deeper nesting than this is refused (no config needs it; Python's recursion would fail).
MAX_DEPTH = 50
#: Values a configuration file may expand to through its aliases.
MAX_VALUES = 100_000


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: object, mark: yaml.Mark | None) -> None:
        super().__init__()
        self.problem = f"the key {key!r} appears twice in one mapping; keep one"
        self.problem_mark = mark


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` (no dot) as a float, as people write it, and
    refuses a key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader explains it below
                break
            if duplicate:
                raise DuplicateKeyError(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise a one-line ``ConfigError`` naming the file."""
    if not path.is_file():  # a FIFO or device would block the read: only regular files
        found = "a folder" if path.is_dir() else "not a regular file" if path.exists() else None
        raise ConfigError(f"{path}: {found or 'file not found'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    data = _load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    return data


def _load(text: str, source: str) -> Any:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(
            f"{source}: nested more than {MAX_DEPTH} levels deep; no setting needs that"
        ) from None
    depth, size = _measure(data, {})
    if depth > MAX_DEPTH:
        raise ConfigError(
            f"{source}: nested more than {MAX_DEPTH} levels deep; no setting needs that"
        )
    if size > MAX_VALUES:
        # anchors of aliases of anchors (a "billion laughs"): a few lines that expand to
        # billions of values; measured on the shared nodes, never expanded
        raise ConfigError(
            f"{source}: its aliases (*name) expand to more than {MAX_VALUES:,} values; no "
            "setting needs that: write the values out"
        )
    return data


def _measure(data: Any, seen: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(depth, values once aliases are expanded) of ``data``, each shared node measured once:
    linear in the file, however far its aliases expand."""
    if not isinstance(data, dict | list):
        return 0, 1
    key = id(data)
    if key in seen:
        return seen[key]
    seen[key] = (MAX_DEPTH + 1, MAX_VALUES + 1)  # a node inside itself (a recursive alias)
    children = data.values() if isinstance(data, dict) else data
    depth, size = 1, 1
    for child in children:
        d, n = _measure(child, seen)
        depth, size = max(depth, d + 1), min(size + n, MAX_VALUES + 1)
        if depth > MAX_DEPTH:
            break
    seen[key] = (depth, size)
    return depth, size


def parse_scalar(text: str, key: str = "") -> Any:
    """Parse a command-line override value the way YAML would (``1e-4`` -> float)."""
    return _load(text, f"--set {key}={text}" if key else text)


def parse_config(model: type[M], data: Mapping[str, Any], source: str) -> M:
    """Validate ``data`` into ``model``; on failure raise a one-line ``ConfigError``."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_recipe(path: Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe file, after applying dotted ``overrides`` (``--set``)."""
    return recipe_with_overrides(read_kind(path, "recipe"), overrides or {}, str(path), "--set")


def read_kind(path: Path, kind: str) -> dict[str, Any]:
    """``read_yaml``, refusing a study file where a recipe is wanted and the other way round,
    with the command the file is for."""
    data = read_yaml(path)
    if isinstance(data, dict) and set(data) == {"ensemble"}:  # config.ensemble.is_ensemble_file
        body = data["ensemble"] if isinstance(data["ensemble"], dict) else {}
        members = body.get("members") if isinstance(body.get("members"), list) else []
        first = members[0].get("recipe") if members and isinstance(members[0], dict) else None
        retrain = ""
        if first and kind == "recipe":
            retrain = (
                f"; to retrain a member, train its recipe: drsearch train {path.parent / first}"
            )
        raise ConfigError(
            f"{path}: this is an ensemble file (drsearch export), not a "
            f"{'training recipe' if kind == 'recipe' else 'study file'}: evaluate it with "
            f"`drsearch evaluate {path}` or grade images with `drsearch predict {path} IMAGES`"
            + retrain
        )
    if kind == "recipe" and is_study_file(data):
        raise ConfigError(
            f"{path}: this is a study file (it has name/recipe/search_space), not a training "
            f"recipe; run the study with `drsearch run {path}`, or train its recipe file"
        )
    if kind == "study" and is_recipe_file(data):
        raise ConfigError(
            f"{path}: this is a training recipe, not a study file; train it with `drsearch "
            f"train {path}`, or name it as `recipe:` in a study file (see studies/demo.yaml)"
        )
    return data


def is_study_file(data: Mapping[str, Any]) -> bool:
    return "search_space" in data or ("recipe" in data and "name" in data)


def is_recipe_file(data: Mapping[str, Any]) -> bool:
    return bool(data) and set(data) <= set(Recipe.model_fields)


def recipe_with_overrides(
    data: dict[str, Any], overrides: Mapping[str, Any], source: str, label: str
) -> Recipe:
    """Validate ``data`` with dotted ``overrides`` applied; a problem with an override is
    blamed on it (``--set optim.lrr=...``), not on the file."""
    for key, value in overrides.items():
        field_annotation(key, f"{label} {key}")
        set_dotted(data, key, value)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        where, message = _describe(exc.errors()[0], Recipe)
        for key, value in overrides.items():
            if where == key or where.startswith(f"{key}."):
                raise ConfigError(f"{label} {key}={value!r}: {message}") from None
        raise ConfigError(format_validation_error(exc, Recipe, source)) from None


def absolute(path: Path, base: Path) -> Path:
    """``path`` against ``base`` (``~`` expanded, ``..`` folded, symlinks kept as given)."""
    path = path.expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def relative_hint(study: Path, wanted: Path) -> str:
    """Why a relative path a study names is not found, and where it is: relative paths are
    read from the directory drsearch runs in; when ``wanted`` exists below the study file's
    folder or one of its parents, say to run from there."""
    cwd = Path.cwd()
    if wanted.is_absolute():
        return ""
    hint = f" (relative paths are read from the directory drsearch runs in, {cwd})"
    folder = absolute(study, cwd).parent
    for base in [folder, *list(folder.parents)[:3]]:
        if base != cwd and (base / wanted).exists():
            return hint[:-1] + f"; it is in {base}: cd {base} and run from there)"
    return hint


def with_absolute_paths(recipe: Recipe, base: Path) -> Recipe:
    """The recipe with every file and folder it names made absolute against ``base``.

    A study resolves its recipe's paths once, against the directory ``drsearch`` was started
    in, before any trial is sent to a worker: a trial never depends on its working directory.
    """
    return map_paths(recipe, lambda path: absolute(path, base))


def with_relative_paths(recipe: Recipe, base: Path) -> Recipe:
    """The recipe with paths under ``base`` written relative to it (others stay absolute),
    so a recipe handed on works from any checkout with the same layout."""

    def relative(path: Path) -> Path:
        return path.relative_to(base) if path.is_absolute() and path.is_relative_to(base) else path

    return map_paths(recipe, relative)


def map_paths(recipe: Recipe, fix: Callable[[Path], Path]) -> Recipe:
    """The recipe with ``fix`` applied to every file and folder it names."""

    def each(path: Path | None) -> Path | None:
        return None if path is None else fix(path)

    d = recipe.data
    sources = [s.model_copy(update={"root": each(s.root), "csv": each(s.csv)}) for s in d.sources]
    data = d.model_copy(
        update={
            "root": each(d.root),
            "csv": each(d.csv),
            "cache_dir": each(d.cache_dir),
            "sources": sources,
        }
    )
    model = recipe.model
    if model.pretrained is not False and str(model.pretrained) not in NAMED_PRETRAINED:
        model = model.model_copy(update={"pretrained": each(Path(model.pretrained))})
    return recipe.model_copy(update={"data": data, "model": model})


def field_annotation(key: str, where: str) -> Any:
    """The type (with its constraints) of a dotted recipe key; a one-line error if none."""
    current: Any = Recipe
    for part in key.split("."):
        current = _child(current, part)
        if current is None:
            raise ConfigError(f"{where}: not a recipe key (the part {part!r} does not exist)")
    return current


def _child(annotation: Any, part: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _child(typing.get_args(annotation)[0], part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        info = annotation.model_fields.get(part)
        if info is None:
            return None
        return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _child(arg, part)
            if found is not None:
                return found
        return None
    if origin is list and part.isdigit():
        limit = NUM_CLASSES
        return typing.get_args(annotation)[0] if int(part) < limit else None
    return None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (every key, defaults included)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line: ``source: key.path: what is wrong`` (plus a count of further problems)."""
    errors = exc.errors()
    first = errors[0]
    # a union (a preset name or a list, say) reports every branch; the deepest error under
    # the same key is the one that says what is wrong (loss.class_weights.2: not finite)
    head = _key_path(first["loc"])
    nested = [e for e in errors if _key_path(e["loc"])[: len(head)] == head]
    # ... and among equals, for a word, the branch that lists the words it may be
    first = max(
        nested,
        key=lambda e: (
            len(_key_path(e["loc"])),
            e["type"] == "literal_error" and isinstance(e.get("input"), str),
        ),
    )
    path, message = _describe(first, model)
    others = {_key_path(e["loc"]) for e in errors} - {_key_path(first["loc"])}
    more = f" (and {len(others)} more problem(s))" if others else ""
    where = f"{path}: " if path else ""
    return f"{source}: {where}{message}{more}"


def _key_path(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The recipe key of an error location, without pydantic's union-member tags
    (``literal['qkv', ...]``, ``list[str]``, ``constrained-float``, ``float``), which are not
    keys a user can write (recipe keys are identifiers)."""
    return tuple(str(p) for p in loc if not (isinstance(p, str) and _UNION_TAG.search(p)))


#: What only pydantic's union-member tags contain (a bracket or a hyphen), or are.
_UNION_TAG = re.compile(r"[\[-]|^(float|int|str|bool|none|list|dict)$")


#: Keys whose values are URLs (a storage, a tracking URI), shown in no error.
_URL_KEYS = ("storage", "tracking_uri")


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> tuple[str, str]:
    loc = list(_key_path(error["loc"]))
    path = ".".join(loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, KeyedValueError):
        return cause.path, cause.message
    given = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"did you mean '{hint[0]}'? " if hint else ""
        return path, f"unknown key; {suggestion}allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return path, "required key is missing"
    if kind in ("literal_error", "enum"):
        return path, f"must be one of {ctx.get('expected')}, got {given!r}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    bounds["less_than_equal"] = "<="
    if kind in bounds:
        limit = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")))
        return path, f"must be {bounds[kind]} {limit}, got {given!r}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    secret = bool(loc) and loc[-1] in _URL_KEYS  # a URL may hold a password: never echoed
    if given is not None and not isinstance(given, dict | list) and "got " not in msg:
        msg = (
            f"{msg}, got {'a value not shown (it may hold a password)' if secret else repr(given)}"
        )
    return path, msg


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
