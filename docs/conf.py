"""Sphinx configuration: the API reference (autodoc + napoleon), the design and results pages (MyST)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import explore  # noqa: E402

project = "explore"
author = "The explore authors"
copyright = "2026, The explore authors"
release = version = explore.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"explore {release}"
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Design and results pages link JSON files and notebooks beside them: plain files, not documents.
suppress_warnings: list[str] = []
nitpicky = False
