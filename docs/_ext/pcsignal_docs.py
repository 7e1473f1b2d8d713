"""
Sphinx directives for pcsignal's documentation, so it cannot drift from the code:

- ``.. twistd-options:: module.Options`` lists every option of a twistd
  plugin from its ``usage.Options`` class: names, short forms, arguments,
  defaults and help texts, exactly what ``twistd PLUGIN --help`` prints.
- ``.. sequence::`` draws a sequence diagram at build time from a text
  source (``A -> B: label``, ``A --> B: label`` dashed, ``note B: text``),
  through Graphviz (sphinx.ext.graphviz), so the call flows live as text in
  the repository.
"""

from __future__ import annotations

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


def setup(app):
    app.setup_extension("sphinx.ext.graphviz")
    app.add_directive("twistd-options", TwistdOptions)
    app.add_directive("sequence", Sequence)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
