"""Flags made from RunConfig's fields, and the options every command shares.

One flag per field (``--local-epochs``, ``--batch-size``, ...), all defaulting to None so that a
command can tell "not given" from "given the default" (`given_options`): `fedclinic run` sends
only what was given, and ``--task segmentation`` fills in its own defaults for the rest. Values
stay text (RunConfig.from_dict converts and checks them, one clear line per mistake); boolean
fields are switches (``--strict`` / ``--no-strict``). Every option's help ends with its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from common.config import RunConfig
from common.task_defaults import describe_task_defaults, with_task_defaults

# What a RunConfig field's value looks like, when its type alone does not say it.
METAVARS: dict[str, str] = {
    "data_path": "PATH", "cache_dir": "DIR", "output_dir": "DIR", "dicom_window": "CENTER,WIDTH",
    "spacing": "MM[,MM...]", "augment": "LIST", "baselines": "LIST", "partition": "SPEC",
    "resume": "NAME", "target_epsilon": "EPS", "noise_multiplier": "SIGMA",
    "round_timeout": "SECONDS", "positive_class": "NAME", "track": "KIND[:WHERE]",
    "init_from": "PATH",
}
TYPE_METAVARS: dict[type, str] = {int: "N", float: "X", str: "TEXT"}
MAX_CHOICES_METAVAR = 32   # longer choice lists show as NAME; the help lists them
REPEATABLE = ("track",)    # text fields whose flag may be repeated: the values join with ','


class ArgumentAdder(Protocol):
    """A parser, an argument group or a mutually exclusive group."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What the CLI needs to know about one RunConfig field."""

    name: str
    default: Any
    help: str
    choices: tuple | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def describe_fields() -> list[FieldInfo]:
    """One FieldInfo per RunConfig field, in the dataclass's order."""
    return [FieldInfo(f.name, f.default, f.metadata["help"], f.metadata.get("choices"))
            for f in dataclasses.fields(RunConfig)]


def metavar(field: FieldInfo) -> str:
    """``{rdp,prv}`` for a short list of choices, else what is expected (PATH, EPS, N, X)."""
    if field.choices:
        shown = ",".join(map(str, field.choices))
        return f"{{{shown}}}" if len(shown) <= MAX_CHOICES_METAVAR else "NAME"
    return METAVARS.get(field.name, TYPE_METAVARS[type(field.default)])


def shown_default(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    return repr(default) if isinstance(default, str) else str(default)


def field_help(field: FieldInfo) -> str:
    extra = f" [choices: {', '.join(map(str, field.choices))}]" if field.choices else ""
    return f"{field.help}{extra} (default: {shown_default(field.default)})"


def add_run_options(parser: ArgumentAdder, *, only: Sequence[str] | None = None,
                    skip: Collection[str] = (), helps: Mapping[str, str] | None = None) -> None:
    """One flag per RunConfig field in the dataclass's order (or per field in `only`, in that
    order), less those in `skip`.

    `helps` replaces a field's help text, its own ``(default: ...)`` included, for commands that
    read the field differently (e.g. `privacy plan`'s batch size is the expected Poisson batch).
    """
    helps = helps or {}
    fields = {f.name: f for f in describe_fields()}
    for field in (fields.values() if only is None else [fields[name] for name in only]):
        if field.name in skip:
            continue
        text = helps.get(field.name) or field_help(field)
        if isinstance(field.default, bool):
            parser.add_argument(field.flag, dest=field.name, default=None,
                                action=argparse.BooleanOptionalAction, help=text)
        elif field.name in REPEATABLE:
            parser.add_argument(field.flag, dest=field.name, default=None, action="append",
                                metavar=metavar(field), help=text)
        else:
            parser.add_argument(field.flag, dest=field.name, default=None,
                                metavar=metavar(field), help=text)


def add_debug(parser: ArgumentAdder) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors (default: off)")


def add_verbose(parser: ArgumentAdder, what: str) -> None:
    parser.add_argument("--verbose", action="store_true", help=f"{what} (default: off)")


def given_options(args: argparse.Namespace, skip: Collection[str] = ()) -> dict[str, Any]:
    """The run options set on a command line (unset = None), plus the task's own defaults for
    those left out, said on stderr (--task segmentation brings a U-Net, ...)."""
    given = {f.name: getattr(args, f.name) for f in describe_fields()
             if f.name not in skip and getattr(args, f.name, None) is not None}
    given.update({name: ",".join(given[name]) for name in REPEATABLE
                  if isinstance(given.get(name), list)})
    values, filled = with_task_defaults(given)
    note = describe_task_defaults(str(values.get("task", RunConfig.task)), filled)
    if note:
        print(note, file=sys.stderr)
    return values


def config_from_args(args: argparse.Namespace, skip: Collection[str] = ()) -> RunConfig:
    return RunConfig.from_dict(given_options(args, skip=skip))
