"""configs/NAME.yaml and the README's key tables, generated from the config Options.

Every config key has one source: its ``Option`` (default, meaning, allowed values) in
pipelines/specs.py, or curate/exports/formats.py for the export formats. The YAML files users
read, copy and curate loads its defaults from, and the README's tables of keys, are written from
those Options:

    python -m curate.config_docs --write    # after changing, adding or removing an Option
    python -m curate.config_docs --check    # exit 1, naming what differs (tests/test_config_docs.py)

In the README only the text between ``<!-- config-table: NAME -->`` and ``<!-- /config-table -->``
is rewritten (NAME is a key of TABLES); everything around it is left as it is.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from curate.config import CONFIG_DIR, UNSET, ConfigError, Option, Schema, flatten
from curate.pipelines.specs import PIPELINES, SECTIONS, PipelineSpec

COMMAND = "python -m curate.config_docs --write"
SOURCE = "pipelines/specs.py (export formats: curate/exports/formats.py)"
README = Path(__file__).resolve().parent.parent / "README.md"
WIDTH = 100          # YAML comment lines wrap here
FLOW_MAX = 60        # a list default longer than this in flow style is written one item per line


class DocsError(Exception):
    """What stops --write: one line per problem."""


@dataclass(frozen=True)
class Table:
    """One README table: some keys of one pipeline, in the order of its YAML file."""
    pipeline: str
    only: tuple[str, ...] = ()   # key prefixes to list (empty: all)
    skip: tuple[str, ...] = ()   # key prefixes to leave out
    # (key, default, meaning) rows that stand for the skipped keys.
    extra_rows: tuple[tuple[str, str, str], ...] = ()

    def keys(self, schema: Schema) -> list[str]:
        return [k for k in ordered_keys(schema)
                if (not self.only or k.startswith(self.only)) and not (self.skip and k.startswith(self.skip))]


TABLES = {
    "laion_filter": Table("laion_filter", skip=("ingest.",), extra_rows=(
        ("`ingest.*`", "as in `configs/ingest.yaml`",
         "used when `input` is a URL table (see \"Ingest: URL tables to raw shards\")"),)),
    "ingest": Table("ingest"),
    "export": Table("export", skip=("chameleon.",)),
    "chameleon": Table("export", only=("chameleon.",)),
}
TABLE_REGION = re.compile(r"(<!-- config-table: ([\w.-]+) -->\n)(.*?)(<!-- /config-table -->)", re.DOTALL)


def ordered_keys(schema: Schema) -> list[str]:
    """The schema's keys grouped by section, sections in order of first appearance (as YAML nests them)."""
    rank: dict[str, int] = {}  # each section and key, by first appearance
    for key in schema:
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            rank.setdefault(".".join(parts[:depth]), len(rank))
    return sorted(schema, key=lambda k: [rank[".".join(k.split(".")[:d])] for d in range(1, k.count(".") + 2)])


def required(option: Option) -> bool:
    """A key without a default: null in the file, which its Option refuses, so the user must give it."""
    return option.default is None and not option.nullable


def yaml_value(value: Any) -> str:
    """One value in YAML flow style, as it reads back (``yaml.safe_load``) to exactly ``value``."""
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 9, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n...\n").rstrip("\n")


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WIDTH - len(indent) - 2, break_on_hyphens=False)]


def _entry(key: str, option: Option, indent: str) -> list[str]:
    name = key.rsplit(".", 1)[-1]
    allowed = option.describe() + ("; no default: required" if required(option) else "")
    plain = option.kind in (str, bool) and allowed == option.describe() and not option.choices and not option.nullable
    lines = _comment(option.help, indent) + ([] if plain else _comment(f"allowed: {allowed}", indent))
    value = option.default
    if isinstance(value, dict) and value:  # an empty one stays in flow style: {}
        return lines + [f"{indent}{name}:"] + [f"{indent}  {yaml_value(k)}: {yaml_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and value and len(yaml_value(value)) > FLOW_MAX:
        return lines + [f"{indent}{name}:"] + [f"{indent}  - {yaml_value(v)}" for v in value]
    return lines + [f"{indent}{name}: {yaml_value(value)}"]


def yaml_text(name: str, spec: PipelineSpec) -> str:
    """configs/NAME.yaml: every key with its default, its meaning and what it allows, nested by section."""
    unset = [k for k, o in spec.schema.items() if o.default is UNSET]
    if unset:
        raise DocsError(f"configs/{name}.yaml: no default for {', '.join(unset)}")
    notes = {**SECTIONS, **spec.notes}
    lines = [f"# GENERATED by `{COMMAND}` from the Options in", f"# {SOURCE}: edit those, not this file.",
             *_comment(f"{name}: {spec.description}.", ""), *(f"#   {line}" for line in spec.about),
             "# Every key is listed with its default. Override with --config FILE or --set key=value."]
    open_sections: list[str] = []
    for key in ordered_keys(spec.schema):
        parts = key.split(".")[:-1]
        common = 0
        while common < min(len(parts), len(open_sections)) and parts[common] == open_sections[common]:
            common += 1
        open_sections = open_sections[:common]
        if not parts or common == 0:
            lines.append("")  # a blank line before each top-level key or section
        for depth in range(common, len(parts)):
            indent, section = "  " * depth, ".".join(parts[:depth + 1])
            if section in notes:
                lines += _comment(notes[section], indent)
            lines.append(f"{indent}{parts[depth]}:")
            open_sections.append(parts[depth])
        lines += _entry(key, spec.schema[key], "  " * len(parts))
    text = "\n".join(lines) + "\n"
    leaves = frozenset(k for k, o in spec.schema.items() if o.kind is dict)
    if flatten(yaml.safe_load(text), leaves=leaves) != {k: o.default for k, o in spec.schema.items()}:
        raise DocsError(f"configs/{name}.yaml as generated does not read back to its Options' defaults")
    return text


def _cell(text: str) -> str:
    """Markdown table cell text: a | would end the cell, <name> would be read as an HTML tag."""
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", text.replace("|", "\\|"))


def _default_cell(option: Option, pipeline: str) -> str:
    if option.default is UNSET:
        return "(none given)"
    if required(option):
        return "required"
    value = yaml_value(option.default)
    if isinstance(option.default, list) and len(value) > FLOW_MAX:
        return f"{len(option.default)} strings, in `configs/{pipeline}.yaml`"
    return f"`{_cell(value)}`"


def table_text(table: Table) -> str:
    """The README table of ``table``'s keys: key, default, what it allows, what it means."""
    schema = PIPELINES[table.pipeline].schema
    rows = [f"<!-- generated from {SOURCE} by `{COMMAND}`; edit the Options there -->",
            "| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key in table.keys(schema):
        o = schema[key]
        rows.append(f"| `{key}` | {_default_cell(o, table.pipeline)} | {_cell(o.describe())} | {_cell(o.help)} |")
    rows += [f"| {key} | {default} | | {meaning} |" for key, default, meaning in table.extra_rows]
    return "\n".join(rows) + "\n"


def readme_text(text: str) -> tuple[str, list[str]]:
    """``text`` with every config-table region regenerated, and the problems met (unknown or missing names)."""
    problems, seen = [], set()
    def fill(m: re.Match) -> str:
        name = m.group(2)
        seen.add(name)
        if name not in TABLES:
            problems.append(f"README.md: unknown config table {name!r} (known: {', '.join(TABLES)})")
            return m.group(0)
        return m.group(1) + table_text(TABLES[name]) + m.group(4)
    new = TABLE_REGION.sub(fill, text)
    problems += [f"README.md has no <!-- config-table: {name} --> ... <!-- /config-table --> region"
                 for name in TABLES if name not in seen]
    return new, problems


def default_problems() -> list[str]:
    """Options without a default, and defaults that their own Option would refuse (a required key aside)."""
    problems = []
    for name, spec in PIPELINES.items():
        for key, option in spec.schema.items():
            if option.default is UNSET:
                problems.append(f"{name}: {key} has no default; give its Option one (default=None: the user "
                                "must set it, unless nullable)")
                continue
            if required(option):
                continue
            try:
                option.check(key, option.default)
            except ConfigError as e:
                problems.append(f"{name}: the default of {e}")
    return problems


def check(config_dir: Path | None = None, readme: Path | None = None) -> list[str]:
    """What differs from the Options: one line per YAML file, README table or bad default."""
    config_dir, readme = config_dir or CONFIG_DIR, readme or README
    problems = default_problems()
    for name, spec in PIPELINES.items():
        path = Path(config_dir) / f"{name}.yaml"
        try:
            expected = yaml_text(name, spec)
        except DocsError as e:
            problems.append(str(e))
            continue
        if not path.exists() or path.read_text(encoding="utf-8") != expected:
            problems.append(f"configs/{name}.yaml differs from the Options in {SOURCE}")
    if not Path(readme).exists():
        problems.append(f"{readme} does not exist (run from a source checkout)")
    else:
        text = Path(readme).read_text(encoding="utf-8")
        new, found = readme_text(text)
        problems += found
        problems += [f"README.md: config table {m.group(2)!r} differs from the Options in {SOURCE}"
                     for m, n in zip(TABLE_REGION.finditer(text), TABLE_REGION.finditer(new)) if m.group(0) != n.group(0)]
    return problems


def write(config_dir: Path | None = None, readme: Path | None = None) -> list[str]:
    """Rewrites the YAML files and README tables that differ; returns the paths written. Writes nothing
    when a default breaks its own Option or the README's table markers are wrong (DocsError)."""
    config_dir, readme = config_dir or CONFIG_DIR, readme or README
    old = Path(readme).read_text(encoding="utf-8")
    new, problems = readme_text(old)
    problems = default_problems() + problems
    if problems:
        raise DocsError("\n".join(problems))
    written = []
    for name, spec in PIPELINES.items():
        path = Path(config_dir) / f"{name}.yaml"
        text = yaml_text(name, spec)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(str(path))
    if new != old:
        Path(readme).write_text(new, encoding="utf-8")
        written.append(str(readme))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curate.config_docs", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite configs/*.yaml and the README's key tables")
    mode.add_argument("--check", action="store_true", help="exit 1 when they differ from the Options")
    args = ap.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"fix: {COMMAND}", file=sys.stderr)
        return 1 if problems else 0
    try:
        written = write()
    except DocsError as e:
        print(e, file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
