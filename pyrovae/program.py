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
import sysconfig
import traceback
from pathlib import Path
from typing import Callable, Optional, Tuple

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
