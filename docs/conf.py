"""Sphinx configuration for pyrovae's documentation.

Built by ``python -m sphinx -W -b html docs docs/_build/html`` (the README says so, and
CI runs it)."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the checkout being documented, installed or not
sys.path.insert(0, str(DOCS))

import pyrovae  # noqa: E402

from api_pages import write_pages, write_test_table  # noqa: E402

project = "pyrovae"
author = "the pyrovae developers"
copyright = "2026, the pyrovae developers"
release = version = pyrovae.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "tests_table.md"]  # the table is included in testing.md
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
html_theme = "furo"
html_title = f"pyrovae {release}"
html_static_path = []

# A reference to one of pyrovae's own names that does not resolve is an error (-W);
# names of other libraries are left as text (the build has no network for their
# inventories).
nitpicky = True
nitpick_ignore_regex = [
    (
        "py:.*",
        r"(torch|pyro|numpy|np|matplotlib|tqdm|argparse|pathlib|os|typing|collections|"
        r"dataclasses|enum|abc|contextlib|concurrent|threading|types|io|json)(\..*)?",
    ),
    # Internal types that public signatures mention; they are not part of the reference.
    ("py:class", r"Producer|(pyrovae\.)?(producers|distributed|threads)\.\w+"),
    (
        "py:.*",
        r"(int|float|str|bool|bytes|dict|list|tuple|set|object|type|None|Callable|Any|"
        r"Optional|Union|Sequence|Iterable|Iterator|Mapping|Dict|List|Tuple|Type|TypeVar|Path|"
        r"PathLike|Tensor|Module|nn\.Module|Distribution|T|R|E|optional|callable|iterable)",
    ),
]
# A re-exported name has an entry in each of its homes (pyrovae.Estimator, and
# pyrovae.estimators.Estimator pointing to it), so a bare "Estimator" in a signature
# matches both: the same object, so the ambiguity is harmless and its warning is not an
# error.
suppress_warnings = ["ref.python"]
autodoc_member_order = "bysource"
# Short signatures; the types beside each documented argument.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"exclude-members": "extra_repr"}
# torch's and Pyro's own docstrings are theirs to render.
autodoc_inherit_docstrings = False
# An override without a docstring of its own (StandardNormal.forward, say) is left out:
# the entry of the pyrovae base class it overrides (Prior.forward) describes it.
napoleon_custom_sections = [
    ("Class attributes", "params_style"),
    ("Log densities", "params_style"),
]


write_pages(DOCS / "api")  # the reference, written from the package's public names
write_test_table(DOCS.parent / "tests", DOCS / "tests_table.md")
