"""The application shell stays readable (issue 25): no function of it takes more than 8
parameters, and none runs past a screen (60 lines of code, its docstring not counted)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyrovae"
SHELL = ["cli.py", "runs.py", "launch.py", "options.py", "training/trainer.py",
         "training/rundir.py", "training/checkpoint.py", "training/config.py"]  # fmt: skip
MAX_PARAMETERS, MAX_LINES = 8, 60


def functions(path: Path):
    """(name, parameter count without self/cls, lines of code without the docstring)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
        count = len(names) - (names[:1] in (["self"], ["cls"]))
        lines = node.end_lineno - node.lineno + 1
        doc = node.body[0]
        if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            lines -= doc.end_lineno - doc.lineno + 1
        yield node.name, count, lines


@pytest.mark.parametrize("module", SHELL)
def test_no_shell_function_takes_more_than_8_parameters_or_a_screen(module):
    too_big = [
        f"{name}: {count} parameters, {lines} lines"
        for name, count, lines in functions(PACKAGE / module)
        if count > MAX_PARAMETERS or lines > MAX_LINES
    ]
    assert not too_big, f"{module}: {too_big}"


def test_a_checkpoints_keys_are_read_in_its_own_module_alone():
    """Outside ``training/checkpoint.py`` (and ``legacy.py``, its reader of 0.1.0's format),
    no module indexes a loaded checkpoint by one of its keys: each asks ``checkpoint``."""
    from pyrovae.training import checkpoint

    keys = set(checkpoint._FIELDS) | set(checkpoint._FIELDS_2) | set(checkpoint._OPTIONAL)
    keys |= {"custom_model", "producer", "version", "format"}
    owners = {PACKAGE / "training" / "checkpoint.py", PACKAGE / "training" / "legacy.py"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in owners:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                name, key = node.value.id, node.slice
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "get" and isinstance(node.func.value, ast.Name) and node.args:
                    name, key = node.func.value.id, node.args[0]
            if (
                key is not None
                and name in ("state", "ckpt", "saved", "checkpoint")
                and isinstance(key, ast.Constant)
                and key.value in keys
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}[{key.value!r}]")
    assert not found, found
