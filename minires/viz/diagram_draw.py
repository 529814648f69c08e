"""Drawing a ``Diagram``: Graphviz's dot source, and a Matplotlib fallback that sizes every box from its text.

Both draw top to bottom (rankdir "TB") or left to right ("LR"). Shortcuts run
on one side of the main path (right of a column, above a row), concatenation
edges on the other: each earlier output runs down a lane of its own, with a
branch into every concatenation that holds it (a dot marks each branch). The
Matplotlib figure measures every label with the renderer that draws it, so
boxes, lanes and the figure itself are as large as their text needs.
"""
import re
import textwrap

from .render import quote

WRAP = {"TB": 64, "LR": 24}        # characters a node label's line may hold before it wraps
SIDE_WRAP = {"TB": 40, "LR": 24}   # the same for a shortcut's label
NOTE_WRAP = 90
CONCAT_COLOR = "#b35900"
SHORTCUT_COLOR = "#1f4e9c"


def wrap(text, width):
    """``text`` with each line broken after ", " or ": " (or, inside one long item, at spaces) to at most
    ``width`` characters, so "3x3 conv 32 /2" stays on one line."""
    out = []

    def flush(line):
        line = line.rstrip()
        if len(line) > width:                       # one long item: at spaces, never inside a word
            out.extend(textwrap.wrap(line, width, break_on_hyphens=False, break_long_words=False))
        else:
            out.append(line)

    for line in text.split("\n"):
        current = ""
        for piece in re.split(r"(?<=, )|(?<=: )", line):
            if current and len((current + piece).rstrip()) > width:
                flush(current)
                current = ""
            current += piece
        flush(current)
    return "\n".join(out)


# ------------------------------------------------------------------ Graphviz

_DOT_NODE_STYLE = {
    "input": 'shape=plaintext, style=""',
    "output": 'shape=plaintext, style=""',
    "stem": 'fillcolor="#eeeeee"',
    "head": 'fillcolor="#eeeeee"',
    "layers": 'fillcolor="#eeeeee"',
    "block": 'fillcolor="#e3edf9"',
    "layer": 'fillcolor="#e6f2e1"',
    "add": 'shape=circle, width=0.3, height=0.3, fixedsize=true, fillcolor="white", fontsize=12',
    "concat": 'fillcolor="#fbecd3", fontsize=8, height=0.2',
}
_SHORTCUT_PORT = {"TB": "e", "LR": "n"}          # shortcuts leave and join the main path on this side


def dot_source(diagram, rankdir="TB", dpi=None):
    """The Graphviz source of ``diagram``: shortcuts are ``style=dashed`` or ``style=solid`` edges with an id
    "shortcut-<block>", concatenation edges have ids "concat-<concat node>-<source node>"."""
    shortcut_side = _SHORTCUT_PORT[rankdir]
    extra = "" if dpi is None else f", dpi={dpi:g}"
    lines = [f"digraph {quote(diagram.model)} {{",
             f'  graph [rankdir={rankdir}, nodesep=0.4, ranksep=0.22, fontname="Helvetica", '
             f'label={quote(diagram.title)}, labelloc=t{extra}];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, height=0.3, group=main];',
             '  edge [arrowsize=0.6, fontname="Helvetica", fontsize=8];']
    for node in diagram.nodes:
        lines.append(f"  {node.id} [label={quote(wrap(node.label, WRAP[rankdir]))}, {_DOT_NODE_STYLE[node.kind]}];")
    for e in diagram.edges:
        if e.kind == "shortcut":
            label = quote(" " + wrap(e.label, SIDE_WRAP[rankdir]))
            lines.append(f"  {e.src} -> {e.dst} [style={e.style}, label={label}, "
                         f"tailport={shortcut_side}, headport={shortcut_side}, weight=0, "
                         f"id={quote('shortcut-' + e.block)}];")
        elif e.kind in ("concat", "branch"):
            lines.append(f'  {e.src} -> {e.dst} [color="{CONCAT_COLOR}", weight=0, '
                         f"id={quote(f'{e.kind}-{e.block}-{e.src}')}];")   # free routes: ports tangle them
        else:
            lines.append(f"  {e.src} -> {e.dst};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ Matplotlib

_COLORS = {"stem": "#eeeeee", "head": "#eeeeee", "layers": "#eeeeee", "block": "#e3edf9", "layer": "#e6f2e1",
           "concat": "#fbecd3"}
FONT, SIDE_FONT = 8, 7                            # points
PAD = (0.12, 0.07)                                # inches of box around a label: across, up and down
DPI = 120                                         # the Matplotlib image's default resolution
GAP, RADIUS, MARGIN = 0.24, 0.1, 0.2              # between boxes along the path; the "+" circle; the figure's edge
SHORTCUT_LANE, CONCAT_LANE, LANE_STEP = 0.3, 0.22, 0.1   # lanes' distance from the widest box, and between lanes


def _lanes(diagram, index):
    """{source node id: lane number} for the edges drawn beside the path, lanes reused once a source is done."""
    spans = {}
    for e in diagram.edges:
        if e.kind in ("concat", "branch") or (e.kind == "main" and index[e.dst] != index[e.src] + 1):
            low, high = spans.get(e.src, (index[e.src], index[e.src]))
            spans[e.src] = (low, max(high, index[e.dst]))
    lanes, ends = {}, []
    for src, (low, high) in sorted(spans.items(), key=lambda kv: kv[1]):
        free = next((k for k, end in enumerate(ends) if end <= low), None)
        if free is None:
            free = len(ends)
            ends.append(high)
        ends[free] = high
        lanes[src] = free
    return lanes


def figure(diagram, rankdir="TB"):
    """``diagram`` drawn on a Matplotlib Figure (no pyplot), ready to save at any dpi.

    Every label is measured first; each box is its label plus ``PAD``, the boxes along a column share the
    widest one's width (a row's share the tallest one's height), and the figure grows to hold the lanes,
    the shortcut labels and the title, so no text is clipped.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path
    from matplotlib.text import Text

    fig = Figure()
    renderer = FigureCanvasAgg(fig).get_renderer()

    def measure(text, size, **style):
        t = Text(0, 0, text, fontsize=size, **style)
        t.set_figure(fig)
        box = t.get_window_extent(renderer)
        return box.width / fig.dpi, box.height / fig.dpi

    tb = rankdir == "TB"
    nodes, index = diagram.nodes, {n.id: i for i, n in enumerate(diagram.nodes)}
    text = {n.id: wrap(n.label, WRAP[rankdir]) for n in nodes}
    italic = {n.id: n.kind in ("input", "output") for n in nodes}
    size = {n.id: measure(text[n.id], FONT, style="italic" if italic[n.id] else "normal") for n in nodes}
    boxed = [n for n in nodes if n.kind not in ("input", "output", "add", "concat")]
    uniform = max([size[n.id][0 if tb else 1] + 2 * PAD[0 if tb else 1] for n in boxed] + [1.6 if tb else 0.3])
    along, across = {}, {}                           # each node's extent along the path and across it
    for n in nodes:
        w, h = size[n.id]
        if n.kind == "add":
            w = h = 2 * RADIUS
        elif n.kind == "concat":
            w, h = w + 2 * 0.06, h + 2 * 0.04
        elif n in boxed:
            w, h = (uniform, h + 2 * PAD[1]) if tb else (w + 2 * PAD[0], uniform)
        along[n.id], across[n.id] = (h, w) if tb else (w, h)
    start, u = {}, 0.0
    for n in nodes:
        start[n.id], u = u, u + along[n.id] + GAP
    length = u - GAP
    centre = {i: start[i] + along[i] / 2 for i in start}
    half = max(across.values()) / 2

    lanes = _lanes(diagram, index)
    concat_side = half + CONCAT_LANE + LANE_STEP * max(lanes.values(), default=-1) + 0.05 if lanes else half
    shortcuts = diagram.shortcuts
    side_text = {e.block: wrap(e.label, SIDE_WRAP[rankdir]) for e in shortcuts}
    side_size = {b: measure(t, SIDE_FONT) for b, t in side_text.items()}
    lane_s = half + SHORTCUT_LANE
    shortcut_side = half if not shortcuts else lane_s + 0.08 + max(s[0 if tb else 1] for s in side_size.values())
    if not tb and shortcuts:                        # a row's shortcut labels sit above their lane, centred
        length = max(length, max(centre[e.src] + along[e.src] / 2 + GAP / 2 + side_size[e.block][0] / 2
                                 for e in shortcuts))
    title = diagram.model
    note = "\n".join(textwrap.fill(line, NOTE_WRAP) for line in diagram.title.split("\n")[1:])
    title_w, title_h = measure(title, 11, weight="bold")
    note_w, note_h = measure(note, 7) if note else (0.0, 0.0)
    head = MARGIN + title_h + (0.06 + note_h if note else 0) + 0.2

    if tb:
        content = concat_side + shortcut_side
        fig_w = max(content, title_w, note_w) + 2 * MARGIN
        fig_h = head + length + MARGIN
        axis = MARGIN + concat_side + (fig_w - 2 * MARGIN - content) / 2

        def at(u, v):
            return axis + v, fig_h - head - u
    else:
        fig_w = max(length, title_w, note_w) + 2 * MARGIN
        fig_h = head + concat_side + shortcut_side + MARGIN
        axis = MARGIN + concat_side

        def at(u, v):
            return MARGIN + u, axis + v

    fig.set_size_inches(fig_w, fig_h)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(0, fig_h)
    ax.axis("off")
    ax.text(fig_w / 2, fig_h - MARGIN, title, ha="center", va="top", fontsize=11, weight="bold", gid="title")
    if note:
        ax.text(fig_w / 2, fig_h - MARGIN - title_h - 0.06, note, ha="center", va="top", fontsize=7,
                color="#9c1f1f", gid="note")

    for n in nodes:
        x, y = at(centre[n.id], 0)
        if n.kind == "add":
            ax.add_patch(Circle((x, y), RADIUS, facecolor="white", edgecolor="black", lw=0.9, gid=f"box-{n.id}"))
            ax.text(x, y, "+", ha="center", va="center", fontsize=9, gid=f"label-{n.id}")
            continue
        if n.kind not in ("input", "output"):
            (x0, y0), (x1, y1) = at(start[n.id], -across[n.id] / 2), at(start[n.id] + along[n.id], across[n.id] / 2)
            ax.add_patch(FancyBboxPatch((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0),
                                        boxstyle="round,pad=0,rounding_size=0.05", facecolor=_COLORS[n.kind],
                                        edgecolor="black", lw=0.8, gid=f"box-{n.id}"))
        ax.text(x, y, text[n.id], ha="center", va="center", fontsize=FONT, gid=f"label-{n.id}",
                style="italic" if italic[n.id] else "normal")

    def arrow(points, gid, **style):
        verts = [at(u, v) for u, v in points]
        patch = FancyArrowPatch(path=Path(verts, [Path.MOVETO] + [Path.LINETO] * (len(verts) - 1)),
                                arrowstyle="-|>", mutation_scale=9, shrinkA=0, shrinkB=0, **style)
        patch.set_gid(gid)
        ax.add_patch(patch)

    for e in diagram.edges:
        src, dst = e.src, e.dst
        if e.kind == "shortcut":
            u0 = start[src] + along[src] + GAP / 2      # where the shortcut leaves the forward path
            arrow([(u0, 0), (u0, lane_s), (centre[dst], lane_s), (centre[dst], RADIUS)], f"shortcut-{e.block}",
                  lw=1.0, color=SHORTCUT_COLOR, linestyle="--" if e.style == "dashed" else "-")
            mid = (u0 + centre[dst]) / 2
            x, y = at(mid, lane_s + (0.08 if tb else 0.05))
            ax.text(x, y, side_text[e.block], fontsize=SIDE_FONT, color=SHORTCUT_COLOR, gid=f"label-shortcut-{e.block}",
                    ha="left" if tb else "center", va="center" if tb else "bottom")
        elif src in lanes and (e.kind != "main" or index[dst] != index[src] + 1):
            v = -(half + CONCAT_LANE + LANE_STEP * lanes[src])
            arrow([(centre[src], -across[src] / 2), (centre[src], v), (centre[dst], v),
                   (centre[dst], -across[dst] / 2)], f"{e.kind}-{e.block}-{src}", lw=0.7, color=CONCAT_COLOR)
            ax.add_patch(Circle(at(centre[dst], v), 0.018, color=CONCAT_COLOR, lw=0))
        else:
            arrow([(start[src] + along[src], 0), (start[dst], 0)], f"main-{src}-{dst}", lw=0.9, color="black")
    return fig
