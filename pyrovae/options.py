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

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from .config import Rule

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

    @property
    def flag_text(self) -> str:
        """The command-line flag, e.g. ``--batch-size``."""
        return self.flag or "--" + self.name.replace("_", "-")

    def but(self, **changes: Any) -> "Option":
        """This option with some fields changed (another command's help text, say)."""
        return dataclasses.replace(self, **changes)

    def add_to(self, parser) -> None:
        """Add this option's flag to an ``argparse`` parser."""
        kwargs: Dict[str, Any] = {"dest": self.name, "help": self.help}
        if self.default is False and (self.rule is None or self.rule.kind == "bool"):
            kwargs["action"] = "store_true"
        else:
            kwargs["default"] = self.default
            if self.rule is not None and self.rule.kind in _TYPES:
                kwargs["type"] = _TYPES[self.rule.kind]
            if self.choices is not None:
                kwargs["choices"] = list(self.choices)
            if self.metavar is not None:
                kwargs["metavar"] = self.metavar
        action = parser.add_argument(self.flag_text, **kwargs)
        setattr(action, OPTION_ATTRIBUTE, self)

    def check(self, value: Any, name: Callable[["Option"], str]) -> Any:
        """``value`` checked by the rule and the choices (normalized as the rule says); an
        error names the option as ``name(option)`` gives it."""
        if self.rule is not None:
            value = self.rule.check(name(self), value)
        if self.choices is not None and value is not None and value not in self.choices:
            raise ValueError(
                f"unknown {self.name} {value!r}; choose one of: {', '.join(self.choices)}"
            )
        return value


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
        """Add every option's flag to ``parser``."""
        for option in self.options:
            option.add_to(parser)

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
