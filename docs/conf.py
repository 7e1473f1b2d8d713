"""Sphinx configuration: builds offline; the test suite builds it with -W."""

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(DOCS))  # the checkout, for autodoc and the options
sys.path.insert(0, os.path.join(DOCS, "_ext"))

from pcsignal import __version__ as release  # noqa: E402

project = "pcsignal"
author = "the pcsignal developers"
copyright = "2026, " + author
version = release
extensions = ["sphinx.ext.autodoc", "pcsignal_docs"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
graphviz_output_format = "svg"
autodoc_member_order = "bysource"
highlight_language = "none"  # literal blocks are shell commands and wire bytes
