"""The documentation site builds offline with warnings as errors, and documents every option."""

import html
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, TWISTD

DOCS = os.path.join(ROOT, "docs")
BENCHMARKS = os.path.join(DOCS, "_data", "benchmarks.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def site_text(out):
    text = []
    for directory, _, files in os.walk(out):
        for name in files:
            if name.endswith(".html"):
                page = open(os.path.join(directory, name), encoding="utf-8").read()
                text.append(html.unescape(re.sub(r"<[^>]+>", "", page)))
    return "\n".join(text)


def help_options(plugin):
    out = subprocess.run([TWISTD, plugin, "--help"], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert out.returncode == 0, out.stderr
    options = set(re.findall(r"(--[a-z][a-z0-9-]+)", out.stdout)) - {"--help", "--version"}
    assert len(options) > 5, out.stdout
    return options


@pytest.mark.parametrize("plugin", ["pcsignal", "pcpeer"])
def test_every_option_is_in_the_built_docs(built, plugin):
    text = site_text(built)
    missing = sorted(o for o in help_options(plugin) if o not in text)
    assert not missing, "options of twistd %s missing from the docs: %s" % (plugin, missing)


def test_call_flows_are_drawn(built):
    page = open(os.path.join(built, "callflows.html"), encoding="utf-8").read()
    drawings = re.findall(r'data="(_images/graphviz-[0-9a-f]+\.svg)"', page)
    assert len(drawings) >= 3, page
    for drawing in drawings:
        assert "<svg" in open(os.path.join(built, drawing), encoding="utf-8").read()


def test_readme_is_short():
    assert len(open(os.path.join(ROOT, "README.rst"), encoding="utf-8").read().splitlines()) <= 150


def recorded_numbers(value):
    """Every number in the recorded benchmark data (the plots' only source)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not key.startswith("_"):
                yield from recorded_numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from recorded_numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_benchmark_plots_are_drawn_from_the_recorded_data(built):
    page = open(os.path.join(built, "benchmarks.html"), encoding="utf-8").read()
    plots = re.findall(r'<img src="(_images/benchmark-[a-z-]+-[0-9a-f]+\.svg)"', page)
    assert len(plots) >= 2, page
    drawn = ""
    for plot in plots:
        svg = open(os.path.join(built, plot), encoding="utf-8").read()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg, plot
        drawn += svg
    # Text stays text in the SVGs: the series and every recorded value are drawn.
    for label in ("pcsignal-ws / PeerJS", "pcsignal-ws / pcsignal-http", "pcsignal-http",
                  "PeerJS", "pairs"):
        assert label in drawn, label
    values = {"%g" % v for v in recorded_numbers(json.load(open(BENCHMARKS, encoding="utf-8")))}
    missing = sorted(v for v in values if ">%s<" % (v,) not in drawn)
    assert not missing, "recorded values not drawn: %s" % (missing,)


def test_the_tables_quote_the_recorded_data():
    # The lead re-records by editing the data file and the tables: they must agree.
    text = open(os.path.join(DOCS, "benchmarks.rst"), encoding="utf-8").read()
    data = json.load(open(BENCHMARKS, encoding="utf-8"))
    missing = sorted({repr(v) for v in recorded_numbers(data) if isinstance(v, float)
                      and not re.search(r"(?<![0-9.])%s(?![0-9])" % re.escape(repr(v)), text)})
    assert not missing, "in docs/_data/benchmarks.json but not in benchmarks.rst: %s" % (missing,)
