"""Config files: pydantic models and their YAML loading, validated in one place."""

from __future__ import annotations

from drsearch.config.loading import (
    load_recipe,
    parse_config,
    parse_scalar,
    read_yaml,
    recipe_to_yaml,
    set_dotted,
)
from drsearch.config.recipe import MONITOR_METRICS, Recipe

__all__ = [
    "MONITOR_METRICS",
    "Recipe",
    "parse_config",
    "load_recipe",
    "parse_scalar",
    "read_yaml",
    "recipe_to_yaml",
    "set_dotted",
]
