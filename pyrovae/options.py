"""A command's options, each declared once: name, default, help and rule (issue 25).

An ``Option`` is what a command's Python function takes as a keyword and what its command line
takes as a flag (``--name`` with dashes, or the ``flag`` given), declared in one place with its
default, its help text, its validation (a ``pyrovae.config.Rule``) and its choices. An
``Options`` is a command's set: ``add_to`` makes the flags of an ``argparse`` parser from it,
``bind`` checks the keywords a function was called with against it and fills in defaults, and
``from_args`` reads the parsed flags back. A flag made here is marked (``OPTION_ATTRIBUTE``), so
a test can walk the parsers and find any flag declared by hand.

Torch-free: the command line builds its parsers before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Type

from .config import Rule, flag_name

# The attribute by which an argparse action says which Option made it.
OPTION_ATTRIBUTE = "pyrovae_option"
_TYPES = {"int": int, "number": float, "str": str}


@dataclass(frozen=True)
class Option:
    """One option: ``name`` (the keyword), ``default``, ``help``; ``rule`` validates a value
    (None: any value of the declared kind, like a path); ``choices`` the strings it may take;
    ``flag`` where the flag is not ``--name`` with dashes (``--checkpoint`` sets ``which``);
    ``metavar`` how the help shows its value. A bool defaulting to False is a switch."""

    name: str
    default: Any
    help: str
    rule: Optional[Rule] = None
    choices: Optional[Sequence[str]] = None
    flag: Optional[str] = None
    metavar: Optional[str] = None
    # The argparse group it is listed under; ``given_only``: absent from the command line is
    # not given (None), so that a config file's or a resumed run's value applies; the help
    # then shows the default.
    group: Optional[str] = None
    given_only: bool = False

    @property
    def flag_text(self) -> str:
        """The command-line flag, e.g. ``--batch-size``."""
        return self.flag or "--" + self.name.replace("_", "-")

    def but(self, **changes: Any) -> "Option":
        """This option with some fields changed (another command's help text, say)."""
        return dataclasses.replace(self, **changes)

    def add_to(self, parser) -> None:
        """Add this option's flag to an ``argparse`` parser (or group)."""
        kind = self.rule.kind if self.rule is not None else None
        kwargs: Dict[str, Any] = {"dest": self.name, "help": self.help}
        if self.default is False and kind in (None, "bool"):
            kwargs["action"] = "store_true"
        elif kind == "dict":  # repeatable KEY=VALUE
            kwargs.update(type=key_value, action="append", default=[], metavar="KEY=VALUE")
        else:
            kwargs["default"] = None if self.given_only else self.default
            kwargs["type"] = comma_ints if kind == "ints" else _TYPES.get(kind)
            if self.choices is not None:
                kwargs["choices"] = self.names()
            if self.metavar is not None:
                kwargs["metavar"] = self.metavar
        if self.given_only and self.default not in (None, {}, ()):
            shown = ",".join(map(str, self.default)) if kind == "ints" else self.default
            kwargs["help"] = f"{self.help} (default {shown})"
        action = parser.add_argument(self.flag_text, **kwargs)
        setattr(action, OPTION_ATTRIBUTE, self)

    def names(self) -> List[str]:
        """The choices (a registry's names are read when asked)."""
        choices = self.choices() if callable(self.choices) else self.choices
        return list(choices or ())

    def check(self, value: Any, name: Callable[["Option"], str]) -> Any:
        """``value`` checked by the rule and the choices (normalized as the rule says); an
        error names the option as ``name(option)`` gives it."""
        if self.rule is not None:
            value = self.rule.check(name(self), value)
        if self.choices is not None and value is not None and value not in self.names():
            raise ValueError(
                f"unknown {self.name} {value!r}; choose one of: {', '.join(self.names())}"
            )
        return value


def comma_ints(text: str):
    """A flag's comma-separated sizes (``200,200``; ``none``: no layer)."""
    text = text.strip()
    if text == "":
        raise argparse.ArgumentTypeError(
            "the hidden sizes are empty (an unset shell variable?); give sizes like 200,200, or "
            "none"
        )
    if text == "none":
        return ()
    try:
        return tuple(int(h) for h in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"hidden sizes are comma-separated whole numbers like 200,200, got {text!r}"
        ) from None


def key_value(text: str):
    """A flag's ``KEY=VALUE`` (a part's option): (key, value)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), option_value(value)


def option_value(text: str) -> Any:
    """A KEY=VALUE option's value: JSON (``0.5``, ``true``, ``[1, 2]``), Python's spellings of
    the same (``.5``, ``True``, ``None``), else the text itself."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    word = text.strip()
    if word in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[word]
    try:
        number = float(word)
    except ValueError:
        return text  # a bare string
    return number if math.isfinite(number) else text


class Options:
    """A command's options, in the order its help lists them."""

    def __init__(self, *options: Option) -> None:
        self.options = tuple(options)
        self.by_name = {o.name: o for o in self.options}
        if len(self.by_name) != len(self.options):
            raise ValueError("an option is declared twice")

    def __iter__(self):
        return iter(self.options)

    def add_to(self, parser) -> None:
        """Add every option's flag to ``parser``, under its group's title where it has one."""
        groups: Dict[str, Any] = {}
        for option in self.options:
            if option.group is not None and option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            option.add_to(groups[option.group] if option.group is not None else parser)

    def bind(self, given: Dict[str, Any], what: str) -> SimpleNamespace:
        """The options of a call of ``what`` with keywords ``given``: each checked (named as
        the keyword), the rest at their defaults. An unknown keyword is a ``TypeError``, as
        Python's own for a function's."""
        unknown = sorted(set(given) - set(self.by_name))
        if unknown:
            raise TypeError(f"{what}() got an unexpected keyword argument {unknown[0]!r}")
        values = {o.name: given.get(o.name, o.default) for o in self.options}
        return SimpleNamespace(**self.checked(values, lambda o: o.name))

    def checked(
        self, values: Dict[str, Any], name: Callable[[Option], str] = lambda o: o.flag_text
    ) -> Dict[str, Any]:
        """``values`` (some of the options) checked and normalized; an error names the option
        by its flag unless ``name`` says otherwise."""
        return {k: self.by_name[k].check(v, name) for k, v in values.items()}

    def from_args(self, args) -> Dict[str, Any]:
        """The options' values from parsed flags (an ``argparse.Namespace``)."""
        return {o.name: getattr(args, o.name) for o in self.options}

    @classmethod
    def of(cls, *groups: Iterable[Option]) -> "Options":
        """The options of several groups, in order."""
        return cls(*(o for group in groups for o in group))


def config_options(cls: Type) -> List[Option]:
    """The flags of a config dataclass (``TrainConfig``, ``VAEConfig``): one per field
    declared with a help text (``pyrovae.config.option``), named by ``flag_name``, validated
    by the field's rule when the config is built, given only when given."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help"):
            continue
        rule = f.metadata["rule"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices") or (rule.choices if rule is not None else None)
        out.append(
            Option(
                f.name,
                default,
                f.metadata["help"],
                rule,
                choices,
                flag_name(f.name),
                group=f.metadata.get("group"),
                given_only=True,
            )  # fmt: skip
        )
    return out
