"""The API reference's pages, written from the package's public names at every build.

Each module in :data:`API_MODULES` gets a page: its docstring, then an entry for every
name in its ``__all__``. A name that :mod:`pyrovae` itself exports is documented there
once (the name users import) and its other homes point to that entry, so no object is
described twice. Being written from ``__all__`` at build time, the reference cannot fall
behind the code; the test suite (``tests/test_docs.py``) holds every such name to a
docstring."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

#: The modules whose public names the reference documents, in the order of its pages.
API_MODULES = (
    "pyrovae",
    "pyrovae.data",
    "pyrovae.parts",
    "pyrovae.estimators",
    "pyrovae.evaluation",
    "pyrovae.training",
    "pyrovae.ppca",
    "pyrovae.m2",
    "pyrovae.threads",
)

_HEADER = ".. Written by docs/api_pages.py at every build: edit the docstrings.\n\n"


def public_names() -> dict[str, list[str]]:
    """``{module: [name, ...]}`` for every module of the reference, as its ``__all__``
    lists."""
    return {m: list(importlib.import_module(m).__all__) for m in API_MODULES}


def kind(obj) -> str:
    """The autodoc directive that documents ``obj``: ``class``, ``function`` or
    ``data``."""
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def data_doc(module: str, name: str) -> list[str]:
    """The ``#:`` comment (or the docstring after the assignment) of a module-level
    value, read where it is assigned: ``module`` or a module below it that it re-exports
    from."""
    candidates = [module] + sorted(m for m in sys.modules if m.startswith(module + "."))
    for candidate in candidates:
        docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line is not None]
    return []


def _data_entry(module: str, name: str) -> str:
    # Not autodata: it reads the comment only in ``module`` itself, and otherwise
    # renders the docstring of the value's type (dict's, str's).
    value = getattr(importlib.import_module(module), name)
    shown = (
        f"   :value: {value!r}\n" if isinstance(value, (int, float, str, tuple)) else ""
    )
    body = "".join(f"   {line}\n" if line else "\n" for line in data_doc(module, name))
    return f".. py:data:: {name}\n   :module: {module}\n{shown}\n{body}"


def _entry(module: str, name: str, home: dict[int, str]) -> str:
    obj = getattr(importlib.import_module(module), name)
    canonical = home.get(id(obj))
    full = f"{module}.{name}"
    if canonical is not None and canonical != full:
        role = {"class": "class", "function": "func", "data": "data"}[kind(obj)]
        directive = {"class": "class", "function": "function", "data": "data"}[
            kind(obj)
        ]
        return (
            f".. py:{directive}:: {name}\n   :module: {module}\n   :no-index-entry:\n\n"
            f"   The same object as :py:{role}:`{canonical}`.\n"
        )
    if kind(obj) == "data":
        return _data_entry(module, name)
    options = ""
    if (
        kind(obj) == "class"
    ):  # its bases where they say something (not a plain ``object``)
        bases = "   :show-inheritance:\n" if obj.__bases__ != (object,) else ""
        options = "   :members:\n" + bases
    return f".. auto{kind(obj)}:: {full}\n{options}"


def page(module: str, names: list[str], home: dict[int, str]) -> str:
    """The reStructuredText of one module's page."""
    title = f"``{module}``"
    lines = [_HEADER, title, "=" * len(title), "", f".. automodule:: {module}", ""]
    for name in names:
        lines += [_entry(module, name, home), ""]
    return "\n".join(lines)


def write_pages(out_dir: Path) -> list[str]:
    """Write one page per module into ``out_dir`` (replacing what is there); their
    names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.rst"):
        old.unlink()
    names = public_names()
    home: dict[int, str] = {}
    for module, public in names.items():  # first home wins: pyrovae's own names first
        for name in public:
            home.setdefault(
                id(getattr(importlib.import_module(module), name)), f"{module}.{name}"
            )
    written = []
    for module, public in names.items():
        (out_dir / f"{module}.rst").write_text(page(module, public, home))
        written.append(module)
    return written


def write_test_table(tests_dir: Path, out: Path) -> None:
    """A Markdown table of the test files and what each holds (its module docstring), so
    the page on the tests lists every file there is and says what the file itself says.
    """
    import ast

    rows = ["| file | what it holds |", "| --- | --- |"]
    for path in sorted(tests_dir.glob("test_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        text = " ".join(doc.split()).replace("|", "\\|")
        rows.append(f"| `tests/{path.name}` | {text} |")
    out.write_text("\n".join(rows) + "\n")
