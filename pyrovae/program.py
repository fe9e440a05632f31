"""A Pyro program of the user's own, named on the command line: ``PACKAGE.MODULE:FUNCTION``.

``pyrovae train --model mypkg.vaes:make`` imports ``mypkg.vaes`` and calls ``make()``, which
returns the program's model and guide, ``(model, guide)``. The run records the name (the
training config's ``model``), so that ``pyrovae train --resume``, ``evaluate``, ``sample``,
``gap`` and ``bdmc`` rebuild the program the same way and load the run's parameters into it.
The function must build the same program each time it is called (the same parameters under the
same names); the checkpoint holds their values.

A module in the working directory is found as ``python -m`` finds it: the working directory is
searched first.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch

from .particles import ProgramError


@dataclass(frozen=True)
class Program:
    """A Pyro program of the user's own, and what of a batch it is called with.

    Attributes:
        model, guide: Pyro programs, called as ``model(x)`` and ``guide(x)`` with a minibatch
            x (B, D), every sample site inside one data plate (the leftmost of their plates).
        labels: call them as ``model(x, y)`` and ``guide(x, y)``, y (B,) int64 the points'
            labels (``Dataset.labels``; -1 where a point has none): a conditional model, or
            one with labels as observed sites. A name instead of True passes y by that
            keyword, ``model(x, digit=y)`` for ``labels="digit"`` (``model`` and ``guide``
            then hold them so wrapped, ``LabelsByKeyword``).
        auxiliary: a term added to the training objective beside the ELBO, called as the
            model is (``auxiliary(x)``, ``auxiliary(x, y)``) and returning (B,), each point's
            share, scaled by N / B with the ELBO's: M2's classification loss α log q(y | x)
            on its labelled points (``pyrovae.m2``). Training only: validation and every
            evaluation (log p(x), AIS, gap) leave it out. None: the ELBO alone.
        classify: for a program with labels that also classifies (M2), ``classify(x)`` gives
            the class logits (B, C); training then records each epoch's validation
            classification error (``valid_error``, the percentage of labelled validation
            points whose argmax is not their label).
    """

    model: Callable
    guide: Callable
    labels: Union[bool, str] = False
    auxiliary: Optional[Callable] = None
    classify: Optional[Callable] = None

    def __post_init__(self) -> None:
        for name in ("auxiliary", "classify"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ProgramError(f"{name} must be a callable, got {getattr(self, name)!r}")
        for name in ("model", "guide"):
            if not callable(getattr(self, name)):
                raise ProgramError(
                    f"the {name} must be a Pyro program (a callable), got {getattr(self, name)!r}"
                )
        keyword = isinstance(self.labels, str) and self.labels.isidentifier()
        if not isinstance(self.labels, bool) and not keyword:
            raise ProgramError(
                f"labels must be True, False or the name of the keyword argument that takes "
                f"them, got {self.labels!r}"
            )
        if keyword:  # (frozen: set once, here)
            for name in ("model", "guide", "auxiliary")[: 3 if self.auxiliary else 2]:
                object.__setattr__(self, name, LabelsByKeyword(getattr(self, name), self.labels))

    def args(self, batch: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The arguments of a call on ``batch`` (``call_args``)."""
        return call_args(batch, bool(self.labels))


def call_args(batch: torch.Tensor, labels: bool) -> Tuple[torch.Tensor, ...]:
    """The arguments pyrovae calls a program with on ``batch``: ``(x,)`` for a batch (B, D),
    or, with ``labels``, ``(x, y)`` for a batch (B, D + 1) whose last column holds them (how
    pyrovae carries a point's fields in one tensor, ``with_labels``)."""
    if not labels:
        return (batch,)
    return batch[:, :-1], batch[:, -1].round().long()


class LabelsByKeyword:
    """A program that takes the labels by keyword, ``fn(x, **{name: y})``, called as
    pyrovae calls one that takes them, ``fn(x, y)``. Its names, and the module whose method it
    is (``__self__``: its parameters and device), are ``fn``'s."""

    def __init__(self, fn: Callable, name: str) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.name = fn, name

    @property
    def __self__(self) -> Any:
        return getattr(self.fn, "__self__", None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.fn(x, *args, **{self.name: y}, **kwargs)


def as_program(made: Any, what: str = "model") -> Program:
    """A ``Program`` from itself or a ``(model, guide)`` pair."""
    if isinstance(made, Program):
        return made
    if isinstance(made, tuple) and len(made) == 2:
        return Program(*made)
    raise ProgramError(
        f"{what} must be a pyrovae.Program or a (model, guide) pair of Pyro programs, got "
        f"{type(made).__name__}"
    )


def with_labels(x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """The batch a program with labels is given: ``x`` (N, D) with ``labels`` (N,) as a last
    column, (N, D + 1); ``x`` itself without labels."""
    if labels is None:
        return x
    return torch.cat([x, labels.to(x.dtype).unsqueeze(1)], 1)


# PACKAGE.MODULE:FUNCTION, each part a Python identifier.
SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def check_spec(spec: str) -> str:
    """``spec`` if it reads ``PACKAGE.MODULE:FUNCTION``; otherwise a ``ProgramError``."""
    if not isinstance(spec, str) or not SPEC.match(spec):
        raise ProgramError(
            f"--model takes PACKAGE.MODULE:FUNCTION (a function returning the model and guide "
            f"of your Pyro program, e.g. mypkg.vaes:make), got {spec!r}"
        )
    return spec


def load_program(spec: str) -> Program:
    """Import the module of ``spec`` (``PACKAGE.MODULE:FUNCTION``), call the function with no
    arguments and return the program it returns, a ``(model, guide)`` pair or a ``Program``.

    Raises:
        ProgramError: one line naming what went wrong (no such module or function, the
            function raised, or it returned something else than two callables) and what to do.
    """
    module_name, function_name = check_spec(spec).split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m searches it, for a console script too
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ProgramError(
            f"--model {spec}: no module {e.name!r} (run from the folder that holds it, or add "
            "that folder to PYTHONPATH)"
        ) from None
    except Exception as e:  # the user's module failed while importing
        raise ProgramError(f"--model {spec}: importing {module_name} failed: {_said(e)}") from e
    top = sys.modules.get(module_name.split(".")[0])
    if getattr(top, "__file__", None):  # the program's package: its frames are the user's
        _PROGRAM_DIRS.add(str(Path(top.__file__).resolve().parent))
    make = getattr(module, function_name, None)
    if not callable(make):
        raise ProgramError(f"--model {spec}: {module_name} has no function {function_name!r}")
    try:
        made = make()
    except Exception as e:
        raise ProgramError(f"--model {spec}: {function_name}() failed: {_said(e)}") from e
    if isinstance(made, Program):
        return made
    if not (isinstance(made, tuple) and len(made) == 2 and all(callable(f) for f in made)):
        raise ProgramError(
            f"--model {spec}: {function_name}() must return (model, guide), two Pyro programs, "
            f"or a pyrovae.Program, got {type(made).__name__}"
        )
    return Program(*made)


def _said(error: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# Where installed code lives (Python's own, torch, Pyro...), and pyrovae's: frames there are
# not the user's program.
_INSTALLED = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
_PYROVAE = str(Path(__file__).resolve().parent)
# The folders of the programs loaded by ``load_program``, installed or not.
_PROGRAM_DIRS: set = set()


def forget_programs() -> None:
    """Forget the folders of the programs loaded so far (``program_frame`` looks there)."""
    _PROGRAM_DIRS.clear()


def program_frame(error: BaseException) -> Optional[traceback.FrameSummary]:
    """Where a program loaded by ``load_program`` raised ``error`` (or the error it was raised
    from, as Pyro re-raises a program's error with the trace's shapes): the innermost frame of
    the root cause outside installed libraries, when it is in the program's folder. None
    otherwise: an error of pyrovae's own code is a bug, whose traceback a report needs."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in reversed(chain):  # the root cause first
        for frame in reversed(traceback.extract_tb(e.__traceback__)):
            path = str(Path(frame.filename).resolve())
            if path.startswith(_PYROVAE + os.sep):
                return None
            if any(path.startswith(p + os.sep) for p in _PROGRAM_DIRS):
                return frame
            if not any(path.startswith(p + os.sep) for p in _INSTALLED):
                return None  # code of someone else's (a script calling pyrovae): not a program's
    return None


def program_error_line(error: BaseException, frame: traceback.FrameSummary) -> str:
    """One line for an error the user's program raised at ``frame``."""
    return f"your program raised {_said(error)} ({frame.filename}:{frame.lineno}, in {frame.name})"
