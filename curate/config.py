"""Pipeline configs: an ``Option`` per key holds its default, its meaning and what it allows.

A config is a flat mapping of dotted keys (``filters.min_image_size``) to values. The Options live in
pipelines/specs.py (and curate/exports/formats.py); configs/NAME.yaml is generated from them
(``python -m curate.config_docs --write``) and gives every key its default at load time; a user file
(``--config``) and ``--set key=value`` override them. Every key and value is checked before any work
starts, and a problem is reported as one line that names the key and what it allows.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from curate import configs

CONFIG_DIR = Path(configs.__file__).resolve().parent


class ConfigError(ValueError):
    """A bad key or value; the message is one line meant for the user."""


class _Unset:
    """An Option built without a default; curate.config_docs refuses to generate a file from it."""
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True)
class Option:
    """One config key: its default, what it means (``help``) and what it accepts."""
    kind: type                      # int, float, bool, str, dict (str -> number, each within min/max),
                                    # or list (of strings, each one of choices when given; of mappings
                                    # when ``fields`` is given)
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    required: tuple[str, ...] = ()  # dict, and list of mappings: names that must be present (in each item)
    # list: its items are mappings with these keys (each a string, number or null; the pipeline checks
    # their values), e.g. safety.blocklists' {path, kind}
    fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()  # list of mappings: fields whose value must be a string
    # The value configs/NAME.yaml gives the key; None writes null, which a key that is not nullable
    # refuses: the user must give that key.
    default: Any = UNSET

    def describe(self) -> str:
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                dict: "a mapping of names to numbers", list: "a list of strings"}[self.kind]
        if self.fields:
            return ("a list of mappings with keys " + ", ".join(
                f"{name} (required)" if name in self.required else name for name in self.fields))
        if self.choices and self.kind is list:
            noun = "a list of " + ", ".join(map(str, self.choices))
        elif self.choices:
            noun = "one of " + ", ".join(map(str, self.choices))
        bounds = []
        if self.min is not None:
            bounds.append(f">= {self.min}")
        if self.max is not None:
            bounds.append(f"<= {self.max}")
        if bounds:
            noun += " " + " and ".join(bounds)
        if self.required:
            noun += " with " + " and ".join(f"a {name!r} entry" for name in self.required)
        return noun + (" or null" if self.nullable else "")

    def check(self, key: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if self.kind is dict:
            if not isinstance(value, dict):
                raise ConfigError(f"config error: {key} must be {self.describe()}, got {value!r}")
            missing = [name for name in self.required if name not in value]
            if missing:
                raise ConfigError(f"config error: {key} must be {self.describe()}, got {value!r}")
            not_names = [k for k in value if not isinstance(k, str)]
            if not_names:  # YAML 1.1 reads no, yes, on, off as booleans: Norwegian "no" would become False
                raise ConfigError(f"config error: {key}: key {not_names[0]!r} is not a name; quote it "
                                  f"(e.g. {{'no': 0.5}}: YAML reads no, yes, on and off as true/false)")
            number = Option(float, self.help, min=self.min, max=self.max)
            return {str(k): number.check(f"{key}.{k}", v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
        if self.kind is list and self.fields:
            return self._check_mappings(key, value)
        if self.kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (
                    self.choices and not set(value) <= set(self.choices)):
                raise ConfigError(f"config error: {key} must be {self.describe()}, got {value!r}")
            return list(value)
        ok = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if ok and self.kind is float and not math.isfinite(value):  # NaN would pass every comparison below
            raise ConfigError(f"config error: {key} must be {self.describe()}, got {value!r} "
                              "(NaN and infinity are not numbers a setting can hold)")
        if ok and self.choices and value not in self.choices:
            ok = False
        if ok and self.min is not None and value < self.min:
            ok = False
        if ok and self.max is not None and value > self.max:
            ok = False
        if not ok:
            raise ConfigError(f"config error: {key} must be {self.describe()}, got {value!r}")
        return value

    def _check_mappings(self, key: str, value: Any) -> list[dict]:
        """A list of mappings: each item's keys among ``fields``, the ``required`` ones present, values
        plain (string, number, bool or null); what the values mean is the pipeline's to check."""
        if not isinstance(value, list):
            raise ConfigError(f"config error: {key} must be {self.describe()}, got {value!r}")
        items = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"config error: {where} must be a mapping with keys {', '.join(self.fields)}, "
                                  f"got {item!r}")
            unknown = sorted(str(k) for k in item if k not in self.fields)
            missing = [name for name in self.required if item.get(name) is None]
            if unknown or missing:
                problem = (f"unknown key(s) {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}")
                raise ConfigError(f"config error: {where}: {problem} (keys: {', '.join(self.fields)}; "
                                  f"required: {', '.join(self.required)})")
            bad = [k for k, v in item.items() if not (v is None or isinstance(v, (str, int, float, bool)))]
            if bad:
                raise ConfigError(f"config error: {where}.{bad[0]} must be a string or a number, got {item[bad[0]]!r}")
            texts = [k for k in self.text_fields if k in item and item[k] is not None and not isinstance(item[k], str)]
            if texts:  # YAML 1.1 reads no, yes, on, off as booleans: language: no would become False
                raise ConfigError(f"config error: {where}.{texts[0]} must be a string, got {item[texts[0]]!r}; "
                                  "quote it (YAML reads no, yes, on and off as true/false)")
            items.append({name: item[name] for name in self.fields if name in item})
        return items


Schema = dict[str, Option]


def flatten(tree: dict, prefix: str = "", leaves: frozenset = frozenset()) -> dict[str, Any]:
    """Nested mapping -> dotted keys; keys in ``leaves`` (mapping-valued options) stay whole."""
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in leaves:
            flat.update(flatten(v, key + ".", leaves))
        else:
            flat[key] = v
    return flat


def _unknown(key: str, schema: Schema) -> ConfigError:
    inside = sorted(k for k in schema if k.startswith(key + "."))
    if inside:  # --set 'shards={samples_per_shard: 10}': a section given as one value
        return ConfigError(f"config error: {key} is a section, not a key; set its keys one by one: "
                           f"{', '.join(inside)} (e.g. --set {inside[0]}=...)")
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = sorted(k for k in schema if k.startswith(section) and "." not in k[len(section):])
    allowed = ", ".join(siblings or sorted(schema))
    return ConfigError(f"config error: unknown key {key!r}; allowed{' under ' + section[:-1] if siblings and section else ''}: {allowed}")


def read_yaml(path: str | os.PathLike, leaves: frozenset = frozenset()) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config error: config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config error: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config error: {path} must hold a mapping of keys to values")
    return flatten(tree, leaves=leaves)


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (so 0.3, true, null and [a, b] mean what they say)."""
    if "=" not in item:
        raise ConfigError(f"config error: --set takes key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load(pipeline: str, schema: Schema, config_file: str | None = None,
         overrides: list[str] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults from configs/PIPELINE.yaml, then the user's file, then --set, then CLI flags."""
    leaves = frozenset(k for k, o in schema.items() if o.kind is dict)
    config = read_yaml(CONFIG_DIR / f"{pipeline}.yaml", leaves)
    layers = [read_yaml(config_file, leaves)] if config_file else []
    layers.append(dict(parse_set(item) for item in overrides))
    layers.append({k: v for k, v in (extra or {}).items() if v is not None})
    for layer in layers:
        for key, value in layer.items():
            parent, _, child = key.rpartition(".")
            if key not in schema and parent in leaves:  # --set select.language_thresholds.en=0.3
                config[parent] = {**(config.get(parent) or {}), child: value}
                continue
            if key not in schema:
                raise _unknown(key, schema)
            config[key] = value
    for key in schema:
        if key not in config:
            raise ConfigError(f"config error: {key} has no value (configs/{pipeline}.yaml should set it)")
    return {key: schema[key].check(key, config[key]) for key in schema}


def section(config: dict[str, Any], name: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``section(cfg, 'filters')`` -> {'min_image_size': 200, ...}."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix) and k[len(prefix):] not in exclude}
