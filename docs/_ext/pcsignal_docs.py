"""
Sphinx directives for pcsignal's documentation, so it cannot drift from the code:

- ``.. twistd-options:: module.Options`` lists every option of a twistd
  plugin from its ``usage.Options`` class: names, short forms, arguments,
  defaults and help texts, exactly what ``twistd PLUGIN --help`` prints.
- ``.. sequence::`` draws a sequence diagram at build time from a text
  source (``A -> B: label``, ``A --> B: label`` dashed, ``note B: text``),
  through Graphviz (sphinx.ext.graphviz), so the call flows live as text in
  the repository.
- ``.. benchmark-plot:: CHART`` draws a chart of recorded benchmark numbers
  at build time, with matplotlib, from ``docs/_data/benchmarks.json`` (the
  one place the numbers live; the tables beside it quote them), into an
  SVG image of the HTML build.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import posixpath
import re

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from sphinx.ext.graphviz import figure_wrapper, graphviz
from sphinx.util.docutils import SphinxDirective
from twisted.python.reflect import namedAny


# -- options reference -------------------------------------------------------------


def option_rows(options_class):
    """(synopsis, help, default) for every option, in --help's order."""
    options = options_class()
    short_for = {long: short for short, long in options.synonyms.items() if len(short) == 1}
    rows = []
    for spec in options.longOpt:
        name = spec.rstrip("=")
        if name in ("help", "version"):
            continue
        takes_value = spec.endswith("=")
        synopsis = "--%s" % (name,)
        if takes_value:
            synopsis += " " + name.split("-")[-1].upper()
        if name in short_for:
            synopsis = "-%s, %s" % (short_for[name], synopsis)
        default = options.defaults.get(name)
        if not takes_value or default in (None, [], {}):
            default = None
        rows.append((synopsis, " ".join((options.docs.get(name) or "").split()), default))
    return rows


class TwistdOptions(Directive):
    required_arguments = 1

    def run(self):
        options_class = namedAny(self.arguments[0])
        items = nodes.definition_list()
        for synopsis, text, default in option_rows(options_class):
            item = nodes.definition_list_item()
            item += nodes.term("", "", nodes.literal(synopsis, synopsis))
            body = nodes.paragraph(text=text)
            if default is not None:
                body += nodes.Text(" Default: ")
                shown = "x".join(map(str, default)) if isinstance(default, tuple) else str(default)
                body += nodes.literal(shown, shown)
                body += nodes.Text(".")
            item += nodes.definition("", body)
            items += item
        return [items]


# -- sequence diagrams ---------------------------------------------------------------

_ARROW = re.compile(r"^\s*(?P<src>[^-:>]+?)\s*(?P<arrow>-->|->)\s*(?P<dst>[^:]+?)\s*:\s*(?P<label>.*)$")
_NOTE = re.compile(r"^\s*note\s+(?P<who>[^:]+?)\s*:\s*(?P<text>.*)$")


def _quote(text):
    return '"%s"' % (text.replace("\\", "\\\\").replace('"', '\\"'),)


def sequence_dot(source: str, participants=None) -> str:
    """DOT for a sequence diagram: lifelines are chains of points, one row per step."""
    steps = []
    order = list(participants or [])
    for number, line in enumerate(source.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        arrow, note = _ARROW.match(line), _NOTE.match(line)
        if arrow:
            step = ("arrow", arrow["src"], arrow["dst"], arrow["label"], arrow["arrow"] == "-->")
            names = [arrow["src"], arrow["dst"]]
        elif note:
            step = ("note", note["who"], None, note["text"], False)
            names = [note["who"]]
        else:
            raise ValueError("line %d is not 'A -> B: label' nor 'note A: text': %r" % (number, line))
        for name in names:
            if name not in order:
                if participants:
                    raise ValueError("line %d: %r is not a participant" % (number, name))
                order.append(name)
        steps.append(step)

    def node(who, row):
        return "p%d_%d" % (order.index(who), row)

    rows = len(steps) + 1
    out = [
        "digraph sequence {",
        '  rankdir=TB; splines=false; nodesep=1.4; ranksep=0.3; bgcolor="transparent";',
        '  node [shape=point, width=0.01, height=0.01, label="", color=gray55];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for who in order:
        out.append('  %s [shape=box, style="rounded,filled", fillcolor="#eef3f8", width=1.1, '
                   'height=0.4, fontname="Helvetica", fontsize=12, label=%s];' % (node(who, 0), _quote(who)))
        chain = " -> ".join(node(who, r) for r in range(rows + 1))
        out.append("  %s [arrowhead=none, style=dashed, color=gray60, weight=1000];" % (chain,))
    for row in range(rows + 1):
        same = "; ".join(node(who, row) for who in order)
        out.append("  {rank=same; %s;}" % (same,))
        if len(order) > 1:
            out.append("  %s [style=invis];" % (" -> ".join(node(w, row) for w in order),))
    for row, (kind, src, dst, label, dashed) in enumerate(steps, 1):
        if kind == "note":
            out.append("  %s [xlabel=%s, fontname=\"Helvetica\", fontsize=9, fontcolor=gray30];"
                       % (node(src, row), _quote(label)))
            continue
        a, b = order.index(src), order.index(dst)
        step = 1 if b > a else -1
        path = [node(order[i], row) for i in range(a, b + step, step)]
        style = "dashed" if dashed else "solid"
        # One arrow across the lifelines between: plain segments, the head on the last.
        for i, (x, y) in enumerate(zip(path, path[1:])):
            attrs = ["constraint=false", "style=%s" % style,
                     "arrowhead=%s" % ("normal" if i == len(path) - 2 else "none")]
            if i == 0:
                attrs.append("label=%s" % (_quote(label),))
            out.append("  %s -> %s [%s];" % (x, y, ", ".join(attrs)))
    out.append("}")
    return "\n".join(out)


class Sequence(SphinxDirective):
    has_content = True
    option_spec = {"caption": directives.unchanged, "participants": directives.unchanged}

    def run(self):
        participants = None
        if "participants" in self.options:
            participants = [p.strip() for p in self.options["participants"].split(",")]
        try:
            dot = sequence_dot("\n".join(self.content), participants)
        except ValueError as e:
            raise self.error("sequence: %s" % (e,))
        node = graphviz()
        node["code"] = dot
        node["options"] = {"docname": self.env.docname}
        node["alt"] = self.options.get("caption", "sequence diagram")
        if "caption" in self.options:
            figure = figure_wrapper(self, node, self.options["caption"])
            self.add_name(figure)
            return [figure]
        return [node]


# -- benchmark plots -------------------------------------------------------------------

BENCHMARKS = os.path.join("_data", "benchmarks.json")  # relative to the docs folder


def _figure(width=7.5, height=3.2):
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    matplotlib.rcParams.update({
        "svg.fonttype": "none",  # text stays text: smaller, searchable
        "svg.hashsalt": "pcsignal",  # the same data draws the same file
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
    return Figure(figsize=(width, height))


def _svg(figure) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    return out.getvalue()


def _grouped_bars(axes, groups, series, colors):
    """Bars per group (x) for each (label, values) series, values written on top."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = axes.bar(xs, values, width, label=label, color=colors[i])
        axes.bar_label(bars, labels=["%g" % v for v in values], fontsize=8, padding=2)
    axes.set_xticks(range(len(groups)), [str(g) for g in groups])


def plot_relay_vs_peerjs(data) -> str:
    """pcsignal over WebSocket against PeerJS and its own hanging GETs; p99 beside PeerJS's."""
    d = data["relay_vs_peerjs"]
    figure = _figure(width=10.5)
    rate, cpu, p99 = figure.subplots(1, 3)
    colors = ["#3b75af", "#d9822b"]
    for axes, key, title in (
            (rate, "msgs_per_s", "relayed msgs/s, ratio (higher is better)"),
            (cpu, "cpu_per_msg", "server CPU per message, ratio (lower is better)")):
        _grouped_bars(axes, d["pairs"], [
            ("pcsignal-ws / PeerJS", d["ws_over_peerjs_" + key]),
            ("pcsignal-ws / pcsignal-http", d["ws_over_http_" + key]),
        ], colors)
        axes.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
        axes.set_title(title)
        axes.set_xlabel("pairs")
        axes.margins(y=0.15)
    rate.legend(frameon=False, loc="upper left")
    _grouped_bars(p99, d["pairs"], [("pcsignal-ws", d["p99_ms_ws"]),
                                     ("PeerJS", d["p99_ms_peerjs"])], ["#3b75af", "#6a9f58"])
    p99.set_title("p99 one-way latency, ms (lower is better)")
    p99.set_xlabel("pairs")
    p99.margins(y=0.15)
    p99.legend(frameon=False, loc="upper left")
    figure.tight_layout()
    return _svg(figure)


def plot_relay_cpu_per_message(data) -> str:
    """Server CPU per relayed message of the three servers, by pairs."""
    d = data["relay_cpu_per_msg_us"]
    servers = ["pcsignal-http", "pcsignal-ws", "PeerJS"]
    figure = _figure(width=5.5, height=3.0)
    axes = figure.subplots()
    _grouped_bars(axes, d["pairs"], [(name, d[name]) for name in servers],
                  ["#d9822b", "#3b75af", "#6a9f58"])
    axes.set_ylabel("server CPU per relayed message (µs)")
    axes.set_xlabel("pairs")
    axes.margins(y=0.15)
    axes.legend(frameon=False)
    figure.tight_layout()
    return _svg(figure)


CHARTS = {
    "relay-vs-peerjs": plot_relay_vs_peerjs,
    "relay-cpu-per-message": plot_relay_cpu_per_message,
}


class benchmark_plot(nodes.General, nodes.Element):
    """An SVG drawn at read time; the HTML writer stores it under _images."""


class BenchmarkPlot(SphinxDirective):
    required_arguments = 1
    option_spec = {"alt": directives.unchanged, "caption": directives.unchanged}

    def run(self):
        chart = CHARTS.get(self.arguments[0])
        if chart is None:
            raise self.error("benchmark-plot: no chart %r (known: %s)"
                             % (self.arguments[0], ", ".join(sorted(CHARTS))))
        path = os.path.join(self.env.srcdir, BENCHMARKS)
        self.env.note_dependency(path)  # edit the numbers, and the page is built again
        try:
            with open(path, encoding="utf-8") as f:
                svg = chart(json.load(f))
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise self.error("benchmark-plot %s: cannot draw from %s: %r"
                             % (self.arguments[0], BENCHMARKS, e))
        node = benchmark_plot()
        node["chart"] = self.arguments[0]
        node["svg"] = svg
        node["alt"] = self.options.get("alt", self.arguments[0])
        node["caption"] = self.options.get("caption")
        return [node]


def visit_benchmark_plot_html(translator, node):
    svg = node["svg"].encode("utf-8")
    name = "benchmark-%s-%s.svg" % (node["chart"], hashlib.sha1(svg).hexdigest()[:12])
    folder = os.path.join(translator.builder.outdir, translator.builder.imagedir)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(svg)
    translator.body.append('<figure class="benchmark-plot"><img src="%s" alt="%s" />'
                           % (posixpath.join(translator.builder.imgpath, name),
                              html.escape(node["alt"])))
    if node["caption"]:
        translator.body.append("<figcaption>%s</figcaption>" % (html.escape(node["caption"]),))
    translator.body.append("</figure>\n")
    raise nodes.SkipNode


def skip_node(translator, node):
    raise nodes.SkipNode


def setup(app):
    app.setup_extension("sphinx.ext.graphviz")
    app.add_directive("twistd-options", TwistdOptions)
    app.add_directive("sequence", Sequence)
    app.add_node(benchmark_plot, html=(visit_benchmark_plot_html, None),
                 latex=(skip_node, None), text=(skip_node, None), man=(skip_node, None),
                 texinfo=(skip_node, None))
    app.add_directive("benchmark-plot", BenchmarkPlot)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
