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

import importlib
import os
import re
import sys
from typing import Callable, Tuple

from .particles import ProgramError

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


def load_program(spec: str) -> Tuple[Callable, Callable]:
    """Import the module of ``spec`` (``PACKAGE.MODULE:FUNCTION``), call the function with no
    arguments and return the ``(model, guide)`` it returns.

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
    make = getattr(module, function_name, None)
    if not callable(make):
        raise ProgramError(f"--model {spec}: {module_name} has no function {function_name!r}")
    try:
        made = make()
    except Exception as e:
        raise ProgramError(f"--model {spec}: {function_name}() failed: {_said(e)}") from e
    if not (isinstance(made, tuple) and len(made) == 2 and all(callable(f) for f in made)):
        raise ProgramError(
            f"--model {spec}: {function_name}() must return (model, guide), two Pyro programs, "
            f"got {type(made).__name__}"
        )
    return made


def _said(error: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
