"""Sphinx configuration: the API reference from the numpydoc docstrings, plus the
Markdown pages of docs/ (API, architecture, scale-out, ...) and the README's quick start.

Built by ``make docs`` into build/docs with warnings as errors (``-W``) and every
cross-reference checked (``nitpicky``): a broken reference fails the build.
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))  # an installed rnnfast wins where there is one

import rnnfast  # noqa: E402

project = "rnnfast"
author = "the rnnfast developers"
copyright = "the rnnfast developers"
version = release = rnnfast.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# every reference must resolve; the outside projects' names (no network: no intersphinx)
# are plain text
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|torch|keras|scipy|tensorflow|onnxruntime|dask|ray|h5py|os|collections|typing)(\..*)?"),
    (r"py:.*", r"(array_like|array-like|ndarray|dtype|callable|optional|default|path-like)"),
]

autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_attributes_as_param_list = False  # Attributes sections as targets (:attr:`x` resolves)
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

html_theme = "alabaster"
html_title = "rnnfast %s" % release
html_static_path = []

# The Markdown pages of docs/ (written alongside the code by several hands) go into the
# table of contents in this order when they are there; any other page after them.
PAGE_ORDER = ["quickstart", "install", "API", "ARCHITECTURE", "streaming", "cluster", "benchmarks", "reference"]


def _pages():
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(HERE) if f.endswith((".md", ".rst")) and f != "index.rst")
    return [p for p in PAGE_ORDER if p in names] + [p for p in names if p not in PAGE_ORDER]


_REPO_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)\)")


def _repo_links(text):
    """Links from a page to files of the repository outside docs/ (``[x](../src/...)``)
    are kept as their text when the file exists (the site holds only docs/); a link to
    a file that does not exist is left as it is, so that the build fails on it."""

    def keep(m):
        target = os.path.normpath(os.path.join(HERE, m.group(2)))
        inside = target.startswith(HERE + os.sep)
        return m.group(1) if os.path.exists(target) and not inside else m.group(0)

    return _REPO_LINK.sub(keep, text)


def _toctree(app, docname, source):
    if not docname.startswith(("index", "reference")):
        source[0] = _repo_links(source[0])
    if docname == "index":
        source[0] = source[0].replace(
            ".. pages will be listed here by conf.py\n", "".join("   %s\n" % p for p in _pages())
        )


def setup(app):
    app.connect("source-read", _toctree)
