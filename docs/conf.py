"""Sphinx configuration: builds offline, warnings are errors in the tests."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

project = "pcsignal"
author = "the pcsignal developers"
copyright = "2026, " + author
from pcsignal import __version__ as release  # noqa: E402

version = release
extensions = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
