"""The documentation holds to the code: every Python example in ``docs/`` and the README runs as
written (and every ``>>>`` example of a docstring, which the API reference shows), every command
line in them parses with the real parser (or names a script that takes its flags), every public
name has a docstring, and the site builds with warnings as errors with an entry for every public
name and method."""

import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from pathlib import Path

import pyro
import pytest

from pyrovae.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED_DATA = ROOT.parent / "shared" / "data"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts) + [ROOT / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def _api_pages():
    spec = importlib.util.spec_from_file_location("api_pages", DOCS / "api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blocks(page: Path, language: str):
    """``(line, text)`` of each fenced block of ``language`` on ``page``."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        if m.group(1) == language:
            yield text.count("\n", 0, m.start(2)) + 1, m.group(2)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


PYTHON_PAGES = [p for p in PAGES if any(blocks(p, "python"))]


@pytest.fixture
def registries():
    """Registrations an example makes (its own estimator, say) are undone afterwards."""
    from pyrovae import DATASETS, ESTIMATORS, GUIDES, LIKELIHOODS, PRIORS

    saved = [(r, dict(r._entries)) for r in (DATASETS, ESTIMATORS, GUIDES, LIKELIHOODS, PRIORS)]
    yield
    for registry, entries in saved:
        registry._entries.clear()
        registry._entries.update(entries)


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_name)
def test_every_python_example_runs_as_written(page, tmp_path, monkeypatch, registries):
    """A page's Python blocks run in order in one namespace, from a fresh directory (``runs/``
    land there), with ``../shared/data`` meaning this checkout's neighbour. A block that starts
    with ``# NAME.py`` is also saved as that module, as the page tells its readers to."""
    sources = [(line, text) for line, text in blocks(page, "python")]
    if any("../shared/data" in t for _, t in sources) and not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    pyro.clear_param_store()
    namespace = {"__name__": "__docs__"}
    saved_modules = []
    for line, text in sources:
        text = text.replace("../shared/data", str(SHARED_DATA))
        module = re.match(r"# (\w+)\.py\n", text)
        if module:
            (tmp_path / f"{module.group(1)}.py").write_text(text)
            saved_modules.append(module.group(1))
        exec(compile(text, f"{_name(page)}:{line}", "exec"), namespace)
    for name in saved_modules:
        sys.modules.pop(name, None)


def _commands(text: str):
    """The command lines of a shell block: continuations joined, comments dropped."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            for part in line.split("&&"):
                yield part.strip()


def _pyrovae_argv(command: str):
    """The arguments a ``pyrovae`` command line gives its parser, or None for another program."""
    words = shlex.split(command)
    if "-m" in words and words[words.index("-m") + 1] == "pyrovae":  # torchrun ... -m pyrovae
        return words[words.index("-m") + 2 :]
    if words and words[0].endswith("pyrovae"):
        return words[1:]
    return None


SHELL = [(p, line, c) for p in PAGES for line, t in blocks(p, "bash") for c in _commands(t)]


@pytest.mark.parametrize(
    "page, line, command",
    [s for s in SHELL if _pyrovae_argv(s[2]) is not None and "..." not in s[2]],
    ids=lambda v: _name(v) if isinstance(v, Path) else str(v)[:60],
)
def test_every_pyrovae_command_in_the_docs_parses(page, line, command):
    parser = build_parser()
    try:
        parser.parse_args(_pyrovae_argv(command))
    except SystemExit:
        pytest.fail(f"{_name(page)}:{line}: `{command}` does not parse")


def _script(command: str):
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word.endswith(".py") and i > 0 and words[i - 1].endswith("python"):
            return word, [w for w in words[i + 1 :] if w.startswith("--")]
    return None


@pytest.mark.parametrize(
    "page, line, command",
    [s for s in SHELL if _script(s[2]) is not None],
    ids=lambda v: _name(v) if isinstance(v, Path) else str(v)[:60],
)
def test_every_script_in_the_docs_exists_and_takes_its_flags(page, line, command):
    script, flags = _script(command)
    path = ROOT / script
    assert path.is_file(), f"{_name(page)}:{line}: {script} is not in the repository"
    source = path.read_text()
    for flag in flags:
        assert f'"{flag.split("=")[0]}"' in source, f"{_name(page)}:{line}: {script} has no {flag}"


def member_doc(cls, name: str):
    """The docstring that describes a member of ``cls``: its own, or that of the pyrovae class
    it overrides, whose entry in the reference describes it (never torch's or Pyro's)."""
    for klass in cls.__mro__:
        if name in vars(klass) and klass.__module__.split(".")[0] == "pyrovae":
            value = vars(klass)[name]
            value = getattr(value, "__func__", value)
            doc = (getattr(value, "__doc__", None) or "").strip()
            if doc:
                return doc
    return None


def _undocumented_members(cls) -> list:
    """Public methods and properties of ``cls`` that are pyrovae's own and have no docstring.
    (An undocumented override of torch's or Pyro's interface, ``forward`` or ``log_prob``, is
    theirs to document and is left out of the reference.)"""
    missing = []
    for name, value in vars(cls).items():
        value = getattr(value, "__func__", value)
        if name.startswith("_") or not (inspect.isfunction(value) or isinstance(value, property)):
            continue
        external = any(
            name in vars(k) and k.__module__.split(".")[0] != "pyrovae" for k in cls.__mro__[1:]
        )
        if member_doc(cls, name) is None and not external:
            missing.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    return missing


def _has_own_docstring(obj) -> bool:
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc or not doc.strip():
        return False
    # A dataclass without a docstring gets its signature as one.
    return not (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("))


def test_every_public_name_and_method_has_a_docstring():
    api = _api_pages()
    missing = []
    for module, names in api.public_names().items():
        for name in names:
            obj = getattr(importlib.import_module(module), name)
            if api.kind(obj) == "data":
                if not api.data_doc(module, name):
                    missing.append(f"{module}.{name} (a `#:` comment where it is assigned)")
                continue
            if not _has_own_docstring(obj):
                missing.append(f"{module}.{name}")
            if inspect.isclass(obj):
                missing += _undocumented_members(obj)
    assert not missing, "public names without a docstring: " + ", ".join(sorted(set(missing)))


def test_the_docs_build_with_warnings_as_errors_and_render_every_public_name(tmp_path):
    """The build CI runs (``-W``): a broken reference, a malformed docstring or a missing image
    fails it. Then every public name, and every documented method of a public class, has its
    anchor in the HTML."""
    pytest.importorskip("sphinx")
    from sphinx.cmd.build import build_main

    out = tmp_path / "html"
    status = build_main(["-W", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
                         str(out)])  # fmt: skip
    assert status == 0, "the documentation does not build without warnings (see stderr)"
    html = "".join(p.read_text() for p in (out / "api").glob("*.html"))
    api = _api_pages()
    absent = []
    for module, names in api.public_names().items():
        for name in names:
            if f'id="{module}.{name}"' not in html:
                absent.append(f"{module}.{name}")
    assert not absent, "public names without an entry in the reference: " + ", ".join(absent)


def _modules_with_examples():
    import pkgutil

    import pyrovae

    names = ["pyrovae"] + [
        m.name for m in pkgutil.walk_packages(pyrovae.__path__, "pyrovae.")
        if not m.name.endswith("__main__")
    ]  # fmt: skip
    return [n for n in names if ">>>" in (inspect.getsource(importlib.import_module(n)))]


@pytest.mark.parametrize("module", _modules_with_examples())
def test_every_docstring_example_runs(module):
    import doctest

    result = doctest.testmod(
        importlib.import_module(module),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
    )
    assert result.attempted > 0 and result.failed == 0, f"{module}: {result}"
