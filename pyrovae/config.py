"""One validation layer for every configuration value, wherever it comes from.

The frozen dataclass configs (``TrainConfig``, ``VAEConfig``) declare each field's rule in its
metadata (:func:`option`). The same rules run on a value from the command line, from a
``--config`` file and from the Python API, before anything is written, and a value that breaks
one raises :class:`OptionError` with one line naming the value as the user wrote it (``--lr``,
``cfg.json: train.lr``, ``lr``), what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, TypeVar, Union

C = TypeVar("C")
Namer = Callable[[str], str]


class OptionError(ValueError):
    """A configuration value of the wrong type or out of range."""


# Counts and sizes above this are refused (unless a rule sets its own maximum): beyond it they
# overflow torch's and numpy's integer arguments before any useful work could be done.
MAX_INT = 2**31 - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _given(value: Any) -> str:
    kind = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}.get(type(value))
    return f"{value!r} ({kind})" if kind else repr(value)


@dataclass(frozen=True)
class Rule:
    """What one option accepts.

    ``kind``: ``int`` (not a bool, not a float), ``number`` (an int or a float, finite), ``str``,
    ``dict`` (a JSON object), ``ints`` (a list of ints) or ``bool``. ``minimum`` bounds ints
    and each of ``ints`` from below, ``maximum`` ints from above (inclusive); ``positive`` asks
    a number to be > 0; ``optional`` lets the value be ``None`` (the library's default
    applies); ``choices`` lists the names a string may take.
    """

    kind: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    positive: bool = False
    optional: bool = False
    # The names a string may take, or a function giving them (a registry's, read when checked).
    choices: Optional[Union[Sequence[str], Callable[[], Sequence[str]]]] = None

    def expected(self) -> str:
        text = {
            "int": "an integer",
            "number": "a finite number",
            "str": "a string",
            "dict": "an object of options",
            "ints": "a list of integers like [200, 200]",
            "bool": "True or False",
        }[self.kind]
        if self.minimum is not None and self.maximum is not None:
            text += f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            text += f" >= {self.minimum}" if self.kind == "int" else f", each >= {self.minimum}"
        if self.positive:
            text += " > 0"
        return text + (" (or null)" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it obeys the rule (lists of ints as tuples, numbers as floats), else an
        ``OptionError`` naming ``name``."""
        if value is None and self.optional:
            return None
        ok, out = self._normalized(value)
        if not ok:
            raise OptionError(f"{name} must be {self.expected()}, got {_given(value)}")
        too_big = [v for v in (out if self.kind == "ints" else [out]) if _is_int(v) and v > MAX_INT]
        if too_big and self.maximum is None:
            raise OptionError(f"{name} must be at most {MAX_INT}, got {too_big[0]}")
        if self.choices is not None:
            names = list(self.choices() if callable(self.choices) else self.choices)
            if out not in names:
                raise OptionError(
                    f"{name} must be one of {', '.join(map(str, names))}, got {_given(value)}"
                )
        return out

    def _within(self, value: Any) -> bool:
        low, high = self.minimum, self.maximum
        return (low is None or value >= low) and (high is None or value <= high)

    def _normalized(self, value: Any) -> Tuple[bool, Any]:
        is_int = _is_int

        if self.kind == "int":
            return is_int(value) and self._within(value), value
        if self.kind == "number":
            if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value):
                return False, value
            ok = (not self.positive or value > 0) and self._within(value)
            return ok, float(value)
        if self.kind == "str":
            return isinstance(value, str), value
        if self.kind == "bool":
            return isinstance(value, bool), value
        if self.kind == "dict":
            return isinstance(value, dict), dict(value) if isinstance(value, dict) else value
        if self.kind == "ints":
            if not isinstance(value, (list, tuple)) or not all(is_int(v) for v in value):
                return False, value
            ok = self.minimum is None or all(v >= self.minimum for v in value)
            return ok, tuple(value)
        raise AssertionError(self.kind)


# numpy's seeds (Pyro seeds numpy too) stop at 2**32 - 1.
SEED_RULE = Rule("int", minimum=0, maximum=2**32 - 1)


def option(
    default: Any = None,
    rule: Optional[Rule] = None,
    help: Optional[str] = None,
    group: Optional[str] = None,
    choices: Optional[Callable[[], Sequence[str]]] = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a validation ``rule``; with a ``help`` text it is also a flag
    of the command line (``flag_name``), listed under ``group`` and offering ``choices`` (where
    they are not the rule's: a dataset is a registered name on the command line, any label
    in Python) (``pyrovae.options.config_options``). ``default_factory`` etc. pass through."""
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    metadata = {"rule": rule, "help": help, "group": group, "choices": choices}
    return dataclasses.field(metadata=metadata, **kwargs)


def part_options(help: str, group: str) -> Any:
    """A field holding a part's options (an object, ``{}`` by default): on the command line a
    repeatable ``--NAME-option KEY=VALUE`` flag, listed under ``group``."""
    return option(rule=Rule("dict"), help=help, group=group, default_factory=dict)


def check_values(cls: Type, d: Dict[str, Any], name: Namer = str) -> Dict[str, Any]:
    """``d`` (some of ``cls``'s fields) with each value checked against its field's rule and
    normalized; ``name(key)`` is how the user wrote the key (a flag, a config-file path)."""
    rules = {f.name: f.metadata.get("rule") for f in dataclasses.fields(cls)}
    out = {}
    for key, value in d.items():
        rule = rules.get(key)
        out[key] = rule.check(name(key), value) if rule is not None else value
    return out


def validate_fields(obj: Any) -> None:
    """Check and normalize every field of a frozen dataclass instance (its ``__post_init__``)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for key, value in check_values(type(obj), values).items():
        object.__setattr__(obj, key, value)


def config_from_dict(cls: Type[C], d: Any, what: str, name: Optional[Namer] = None) -> C:
    """``cls(**d)``, but an unknown key or a bad value is an ``OptionError`` naming it (by
    ``name(key)``, default ``key``), so that a typo in a config file fails loudly instead of
    being ignored. ``what`` names the section."""
    name = name or str
    if not isinstance(d, dict):
        raise OptionError(f"the {what} options must be an object of options, got {_given(d)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        shown = ", ".join(name(k) for k in unknown)
        raise OptionError(f"unknown {what} option(s) {shown}; known: {sorted(names)}")
    return cls(**check_values(cls, d, name))


def flag_name(key: str) -> str:
    """The command-line flag that sets option ``key`` (``batch_size`` -> ``--batch-size``)."""
    return {
        "likelihood_options": "--likelihood-option",
        "estimator_options": "--estimator-option",
        "dataset_options": "--dataset-option",
        "prior_options": "--prior-option",
        "guide_options": "--guide-option",
    }.get(key, "--" + key.replace("_", "-"))


def check_arguments(rules: Dict[str, Rule], values: Dict[str, Any], name: Namer = str) -> None:
    """Check the arguments of a function (or the flags of a command) that have a rule."""
    for key, rule in rules.items():
        if key in values:
            rule.check(name(key), values[key])
