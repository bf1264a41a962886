"""Method configs are dataclasses: defaults in code (mirroring the official repositories), overridable from YAML
files and `key=value` arguments on the command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ClipadaptError

ConfigT = TypeVar("ConfigT")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["lr=0.002", "templates=a photo of a {}."]` -> values typed by YAML (`0.002` is a float, `true` a bool)."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ClipadaptError(f"override '{pair}' is not of the form key=value")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw  # not YAML: keep the text as it was typed
    return values


def build_config(
    config_class: type[ConfigT], values: dict[str, Any] | None = None, source: str = "overrides"
) -> ConfigT:
    """An instance of `config_class` with `values` applied; unknown keys and wrong types raise a clear error."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values or {}) - set(fields))
    if unknown:
        raise ClipadaptError(
            f"unknown {config_class.__qualname__} key(s) in {source}: {', '.join(unknown)}; known: {', '.join(fields)}"
        )
    defaults, typed = config_class(), {}
    for key, value in (values or {}).items():
        default = getattr(defaults, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, float) and isinstance(value, str):
            try:  # YAML 1.1 reads exponents without a dot ("5e-4") as strings
                value = float(value)
            except ValueError:
                pass
        if isinstance(default, str) and not isinstance(value, str):
            value = str(value)  # e.g. a template typed without quotes that YAML read as something else
        if default is not None and not isinstance(value, type(default)):
            raise ClipadaptError(f"{key} in {source} must be {type(default).__name__}, got {value!r}")
        typed[key] = value
    return config_class(**typed)  # through the class's own checks (__post_init__), with every value in place


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The YAML document in the user's file `path`. A file that cannot be read or parsed raises one line,
    `cannot read WHAT PATH: ...`, with a syntax error's line, column and problem: PyYAML's own message spans
    several lines and ends with a caret under the spot, and the CLI prints only an error's last line."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ClipadaptError(f"cannot read {what} {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ClipadaptError(f"cannot read {what} {path}: {yaml_problem(e)}") from e


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error as one line: `line L, column C: PROBLEM` (1-based), with what PyYAML was in the middle of
    (`while parsing a flow sequence at line 1, column 4`) in brackets when it says."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or not problem:  # not a syntax error at a place (e.g. an emitter or representer error)
        return " ".join(str(error).split())
    line = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        return f"{line} ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return f"{line} ({context})" if context else line


def load_config_file(path: str | Path) -> dict[str, Any]:
    values = read_yaml_file(path, "config file") or {}
    if not isinstance(values, dict):
        raise ClipadaptError(f"config file {path} must hold a mapping of key: value")
    return flatten_sections(values)


def flatten_sections(values: dict[str, Any]) -> dict[str, Any]:
    """Config values with an add-on's section (`ship:` with its keys under it, as a YAML file or a saved
    classifier holds it) as `ship.KEY`, as on the command line."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat
