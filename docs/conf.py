"""Sphinx configuration: numpydoc API pages, a sphinx-gallery of executed examples, and the
experiment-file reference generated from the schema the validator uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import evflow

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

project = "evflow"
author = "the evflow developers"
copyright = "the evflow developers"
version = release = evflow.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

# the headless examples draw with Agg; the napari example opens a real viewer on the X display
os.environ.setdefault("MPLBACKEND", "Agg")

autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5"]
templates_path = []

html_theme = "pydata_sphinx_theme"
html_title = f"evflow {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []

intersphinx_mapping = {}  # the docs build offline

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "image_scrapers": ("matplotlib",),
    "show_memory": False,
    "capture_repr": ("_repr_html_", "__repr__"),
}


def _experiment_reference(app):
    """Write experiment_reference.rst from the validator's schema (one source of truth)."""
    from gen_reference import write_reference

    write_reference(HERE / "experiment_reference.rst")


def setup(app):
    app.connect("builder-inited", _experiment_reference)
