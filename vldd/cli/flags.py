"""Config dataclasses -> argparse flags: one flag per field, its help the field's comment.

The config modules (`vldd.configs.*`) import no model library, so the fields are read from the dataclasses themselves
(`dataclasses.fields`, `typing.get_type_hints`); only the comments that serve as help texts are read from the source,
with `tokenize`. A field may carry its help in its metadata instead (`help`), or take it from the same-named field of
another config (`same_as`, with `unset`: what None means there).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import sys
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        # One line: the usage of a command with ~60 flags would bury the message.
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_value(kind, text: str):
    """A flag's text as a value of the field's type `kind` (lists: comma-separated, integers where they are digits)."""
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if text.lower() in ("none", "null") and type(None) in typing.get_args(kind):
        return None
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return parse_value(args[0], text)
    if origin is list or (args and typing.get_origin(args[0]) is list):
        return [int(t) if t.strip().isdigit() else t.strip() for t in text.split(",") if t.strip()]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    return text


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One field of a config dataclass, as a flag needs it."""

    name: str  # dotted below a section: "generation.guidance_scale"
    kind: Any  # the type: int, float | None, list[str | int] | None, ...
    default: Any  # the field's default; MISSING for a default_factory
    help: str  # the field's comment (or its metadata's help)


@functools.cache
def module_comments(module: str) -> dict[str, dict[str, str]]:
    """The comments of the fields of every class in `module`'s source: {class: {field: comment}}.

    A field's comment is its end-of-line one (`x: int = 3  # this`), else the comment lines right above it. Only
    the module's file is read (one tokenize pass, cached); the module is already imported.
    """
    source = Path(inspect.getfile(sys.modules[module])).read_text()
    found: dict[str, dict[str, str]] = {}
    depth, cls, line, above = 0, None, [], []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.NL:
            if not line and not tok.line.strip():
                above = []  # a blank line: the comments above it belong to nothing below
        elif tok.type == tokenize.COMMENT and not line:
            above.append(tok.string[1:].strip())
        elif tok.type == tokenize.NEWLINE:
            words = [t for t in line if t.type != tokenize.COMMENT]
            if depth == 0:
                cls = words[1].string if words[0].string == "class" else None
                found.setdefault(cls, {})
            elif depth == 1 and cls and len(words) > 1 and words[0].type == tokenize.NAME and words[1].string == ":":
                ends = [t.string[1:].strip() for t in line if t.type == tokenize.COMMENT]
                found[cls][words[0].string] = ends[-1] if ends else " ".join(above)
            line, above = [], []
        elif tok.type != tokenize.ENDMARKER:
            line.append(tok)
    return found


def field_help(cls: type, f: dataclasses.Field) -> str:
    """A field's help text: its metadata's `help`, the `same_as` config's comment (and what None means), else the
    comment the source gives it."""
    if "help" in f.metadata:
        return f.metadata["help"]
    if "same_as" in f.metadata:  # "{default}" in `unset` names that config's default
        same = _field(f.metadata["same_as"], f.name)
        text = field_help(f.metadata["same_as"], same)
        return f"{text}; None = {f.metadata['unset'].format(default=same.default)}" if f.metadata["unset"] else text
    return module_comments(cls.__module__).get(cls.__name__, {}).get(f.name, "")


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


@functools.cache
def config_fields(cls: type) -> tuple[ConfigField, ...]:
    """The fields of the config dataclass `cls`, each with its type, default and help.

    A field whose type is another dataclass (a `DistillConfig` section) is expanded into that class's fields, named
    "section.field".
    """
    hints = typing.get_type_hints(cls)
    found: list[ConfigField] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found += [dataclasses.replace(sub, name=f"{f.name}.{sub.name}") for sub in config_fields(kind)]
        else:
            found.append(ConfigField(f.name, kind, f.default, field_help(cls, f)))
    return tuple(found)


class _Extend(argparse.Action):
    """Appends a list flag's parsed values (each a list) to what earlier occurrences gave."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        for value in values if self.nargs == "+" else [values]:
            items.extend(value if isinstance(value, list) else [value])
        setattr(namespace, self.dest, items)


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, fields: Sequence[ConfigField], *,
                     dest: str, flags: Callable[[str], list[str]], switches: bool = False,
                     metavars: dict[str, str] | None = None, choices: dict[str, Sequence[str]] | None = None,
                     required: Sequence[str] = (), several: Sequence[str] = ()) -> None:
    """Adds one flag per config field, its help the field's comment; every command's settings go through here.

    Values land in `args` as `"<dest>:<field name>"` (None when the flag is not given, so that a YAML file or a
    preset underneath keeps its value). Booleans are `--x/--no-x` switches when `switches`, else `--x true|false`.
    List fields take comma-separated values and may be repeated; those named in `several` also take several
    space-separated values (`--distilled a b c`).
    """
    metavars, choices = metavars or {}, choices or {}
    for f in fields:
        text = f.help
        if f.default is not dataclasses.MISSING and f.default is not None and f.default != []:
            text += f" (default: {f.default})"
        options: dict[str, Any] = {"dest": f"{dest}:{f.name}", "default": None, "help": text.replace("%", "%%"),
                                   "required": f.name in required}
        if f.kind is bool and switches:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = functools.partial(parse_value, f.kind)
            options["metavar"] = ("{" + ",".join(choices[f.name]) + "}" if f.name in choices
                                  else metavars.get(f.name, "VALUE"))
            members = [a for a in typing.get_args(f.kind) or (f.kind,) if a is not type(None)]
            if f.name in several or typing.get_origin(members[0]) is list:  # `str | list[str]` is a str on the CLI
                options["action"] = _Extend  # comma-separated, and the flag may be repeated
                if f.name in several:
                    options["nargs"] = "+"
        parser.add_argument(*flags(f.name), **options)


def given(args: argparse.Namespace, dest: str) -> dict[str, Any]:
    """The flags given under `dest` (`"<dest>:a.b"`), by field name ("a.b")."""
    return {key[len(dest) + 1:]: value for key, value in vars(args).items()
            if key.startswith(f"{dest}:") and value is not None}


def nested(args: argparse.Namespace, dest: str) -> dict:
    """The flags given under `dest` (`"<dest>:a.b"`) as nested overrides ({"a": {"b": value}})."""
    overrides: dict = {}
    for key, value in given(args, dest).items():
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return overrides
