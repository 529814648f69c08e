"""The autograd graph as data (``AutogradGraph``: nodes and edges) and its drawing: Graphviz or Matplotlib.

Graphviz's ``dot`` lays the graph out where it is on PATH. Where it is not (most Windows
machines), Matplotlib draws it with a small layered layout of its own: each node in the row
of its longest path from the leaves (a leaf one row above its first consumer), the rows
ordered by the mean position of each node's neighbours, then each node nudged towards its
neighbours without overlapping the next. Neither touches pyplot or the caller's backend.
"""
import base64
import collections
import os
from dataclasses import dataclass, field

from .render import check_backend, draw, quote, run_dot, save_figure
from .render import image_format as _image_format

FORMATS = {".png": "png", ".svg": "svg"}
# kind -> (fill, border, border width, dashed)
STYLES = {"leaf": ("#fff2cc", "#7f6000", 0.8, False), "constant": ("#f2f2f2", "#7f7f7f", 0.8, True),
          "op": ("#e3edf9", "#1f3864", 0.8, False), "add": ("#fbe5d6", "#c55a11", 2.0, False),
          "module": ("#e2f0d9", "#385723", 1.2, False)}
SHORTCUT = "#1f4e9c"


def image_format(path):
    """"png" or "svg" from a path's suffix; anything else is refused."""
    return _image_format(path, FORMATS, "draw_graph")


def _fmt(v):
    return f"{v:.3g}"


@dataclass
class GraphNode:
    """A node: kind "leaf" (a tensor that needs a gradient), "constant", "op", "add" (a residual add) or "module"."""

    id: str
    kind: str
    name: str                      # the op ("Conv2d"), the leaf's name, or the module's path
    module: str = None             # an op's module (the innermost call it ran in); a module box's class
    shape: tuple = None
    dtype: str = None
    grad_norm: float = None        # of the tensor this node made (a box: its output); None before backward
    ops: int = 0                   # a module box: the Functions inside
    params: int = 0                # a module box: the leaf tensors drawn inside it
    via_shortcut: float = None     # a residual add (or a box around one): |gradient reaching x| by the shortcut
    via_residual: float = None     # ... and by the residual branch

    @property
    def label(self):
        """The node's text: what it is, its tensor's shape and dtype, its gradient norm(s)."""
        if self.kind == "module":
            lines = [f"{self.name}: {self.module} ({self.ops} ops, {self.params} leaves)"]
        else:
            lines = [f"{self.name}  [{self.module}]" if self.module else self.name]
        if self.shape is not None:
            lines.append(f"{'x'.join(map(str, self.shape)) or 'scalar'} {self.dtype}")
        if self.grad_norm is not None:
            lines.append(f"|grad| {_fmt(self.grad_norm)}")
        parts = [f"{w} {_fmt(v)}" for w, v in (("shortcut", self.via_shortcut), ("branch", self.via_residual))
                 if v is not None]
        if parts:
            lines.append("|grad| to block input: " + ", ".join(parts))
        return "\n".join(lines)


@dataclass
class GraphEdge:
    """Data flowing from node ``src`` to node ``dst``: kind "shortcut" or "branch" into a residual add, else "data"."""

    src: str
    dst: str
    kind: str = "data"


@dataclass
class AutogradGraph:
    """What ``draw_graph`` drew: nodes (inputs before what they feed) and edges; shows itself in a notebook."""

    nodes: list
    edges: list
    title: str = ""
    depth: object = None           # the depth modules were collapsed at (None: every op drawn)
    backend: str = None            # what drew the last image
    path: str = None
    dpi: int = 80
    _png: bytes = field(default=None, repr=False)

    def node(self, name):
        """The first node of that name (an op such as "Conv2d", a leaf's name, a module's path)."""
        return next(n for n in self.nodes if n.name == name)

    def to_dot(self):
        """The Graphviz source of the drawing."""
        return to_dot(self)

    def save(self, path, backend="auto"):
        """Write ``path`` (.png or .svg by its suffix) with "auto" (dot where installed), "graphviz" or "matplotlib"."""
        data, self.backend = render(self, image_format(path), backend, self.dpi)
        with open(path, "wb") as fh:
            fh.write(data)
        self.path = os.fspath(path)
        return self

    def _repr_mimebundle_(self, include=None, exclude=None):
        """One PNG in a notebook (a bundle, so that Jupyter stores one image, not one per format)."""
        if self._png is None:
            self._png, self.backend = render(self, "png", "auto", self.dpi)
        return {"image/png": base64.b64encode(self._png).decode("ascii"), "text/plain": repr(self)}

    def __repr__(self):
        ops = sum(n.kind in ("op", "add") for n in self.nodes)
        boxes = sum(n.kind == "module" for n in self.nodes)
        return f"<AutogradGraph: {ops} ops, {boxes} module boxes, {len(self.nodes)} nodes, {len(self.edges)} edges>"


# ------------------------------------------------------------------ Graphviz

def to_dot(graph):
    """The Graphviz source: nodes styled by kind, residual adds' shortcut edges blue and labelled."""
    lines = [f"digraph {quote(graph.title or 'autograd')} {{",
             f'  graph [rankdir=TB, nodesep=0.25, ranksep=0.3, fontname="Helvetica", fontsize=11, '
             f'label={quote(graph.title)}, labelloc=t];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=9, height=0.3];',
             '  edge [arrowsize=0.6, fontname="Helvetica", fontsize=8];']
    for n in graph.nodes:
        fill, border, width, dashed = STYLES[n.kind]
        style = '"rounded,filled,dashed"' if dashed else '"rounded,filled"'
        lines.append(f"  {n.id} [label={quote(n.label)}, fillcolor=\"{fill}\", color=\"{border}\", "
                     f"penwidth={width}, style={style}, id={quote('node-' + n.id)}];")
    for e in graph.edges:
        extra = ""
        if e.kind == "shortcut":
            extra = f' [color="{SHORTCUT}", fontcolor="{SHORTCUT}", penwidth=2, label=" shortcut", ' \
                    f'id={quote(f"shortcut-{e.src}-{e.dst}")}]'
        elif e.kind == "branch":
            extra = ' [label=" branch"]'
        lines.append(f"  {e.src} -> {e.dst}{extra};")
    return "\n".join(lines + ["}"]) + "\n"


def render(graph, fmt, backend, dpi):
    """(image bytes, the backend that drew them); "auto" falls back to Matplotlib if dot is absent or fails."""
    check_backend(backend, "draw_graph")
    args = [f"-Gdpi={dpi}"] if fmt == "png" else []
    return draw(fmt, backend, lambda: run_dot(to_dot(graph), fmt, "draw_graph", args),
                lambda: _matplotlib(graph, fmt, dpi), stacklevel=3)


# ------------------------------------------------------------------ Matplotlib

CHAR_W, LINE_H, PAD, GAP_X, GAP_Y = 0.058, 0.14, 0.1, 0.18, 0.32   # inches, for 7-point text


def layout(graph):
    """Node boxes {id: (x, y, width, height)} and edge routes [[(x, y), ...] per edge], in inches, y down.

    An edge that skips rows passes through a thin placeholder in each row between (as in Sugiyama's
    method), so the packing keeps it beside the nodes of those rows instead of across them.
    """
    ids = [n.id for n in graph.nodes]
    size = {n.id: (max(map(len, n.label.split("\n"))) * CHAR_W + 2 * PAD, (n.label.count("\n") + 1) * LINE_H + PAD)
            for n in graph.nodes}
    main = {n.id for n in graph.nodes if n.kind not in ("leaf", "constant")}
    preds, succs = collections.defaultdict(list), collections.defaultdict(list)
    for e in graph.edges:
        preds[e.dst].append(e.src)
        succs[e.src].append(e.dst)
    rank, pending = {}, {i: len(preds[i]) for i in ids}
    ready = [i for i in ids if not pending[i]]
    while ready:                                       # longest path from the sources, in node order
        i = ready.pop(0)
        rank[i] = 1 + max((rank[p] for p in preds[i]), default=-1)
        for s in succs[i]:
            pending[s] -= 1
            if not pending[s]:
                ready.append(s)
    for i in ids:                                      # a source sits just above its first consumer
        if not preds[i] and succs[i]:
            rank[i] = max(0, min(rank[s] for s in succs[i]) - 1)
    chains, near = [], collections.defaultdict(list)
    for k, e in enumerate(graph.edges):                # placeholders along edges that skip rows
        chain = [e.src] + [("via", k, r) for r in range(rank[e.src] + 1, rank[e.dst])] + [e.dst]
        for a, b in zip(chain, chain[1:]):
            near[a].append(b)
            near[b].append(a)
        for d in chain[1:-1]:
            rank[d], size[d] = d[2], (0.12, 0.0)
            main.add(d)
        chains.append(chain)
    rows = collections.defaultdict(list)
    for i in rank:
        rows[rank[i]].append(i)
    x = {}
    for r in sorted(rows):
        left = 0.0
        for i in rows[r]:
            x[i] = left + size[i][0] / 2
            left += size[i][0] + GAP_X

    side = {i: 2 if isinstance(i, tuple) else 1 if i in main else 0 for i in rank}   # leaves left, long edges right

    def anchors(i):                                    # an op follows ops; a leaf follows what it feeds
        on_main = [j for j in near[i] if j in main]
        return on_main if i in main and on_main else near[i]

    for sweep in range(24):
        for r in (sorted(rows) if sweep % 2 == 0 else sorted(rows, reverse=True)):
            want = {i: sum(x[j] for j in anchors(i)) / len(anchors(i)) if anchors(i) else x[i] for i in rows[r]}
            row = sorted(rows[r], key=lambda i: (side[i], want[i], x[i]))
            p = max(range(len(row)), key=lambda k: (side[row[k]] == 1, len(near[row[k]])))
            x[row[p]] = want[row[p]]                   # the row's main node where it wants to be, the rest
            for a, b in zip(row[p:], row[p + 1:]):     # packed around it, no closer than the gap
                x[b] = max(want[b], x[a] + (size[a][0] + size[b][0]) / 2 + GAP_X)
            for a, b in zip(row[p::-1], row[p - 1::-1] if p else []):
                x[b] = min(want[b], x[a] - (size[a][0] + size[b][0]) / 2 - GAP_X)
            rows[r] = row
    x0 = min(x[i] - size[i][0] / 2 for i in rank)
    top, y, heights = 0.0, {}, {}
    for r in sorted(rows):
        heights[r] = max(size[i][1] for i in rows[r])
        for i in rows[r]:
            y[i] = top + heights[r] / 2
        top += heights[r] + GAP_Y
    boxes = {i: (x[i] - x0, y[i], size[i][0], size[i][1]) for i in ids}
    routes = []
    for chain in chains:
        src, dst = chain[0], chain[-1]
        points = [(x[src] - x0, y[src] + size[src][1] / 2)]
        for d in chain[1:-1]:                          # straight down through each row it crosses
            h = heights[d[2]] / 2
            points += [(x[d] - x0, y[d] - h), (x[d] - x0, y[d] + h)]
        routes.append(points + [(x[dst] - x0, y[dst] - size[dst][1] / 2)])
    return boxes, routes


def _matplotlib(graph, fmt, dpi):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path

    boxes, routes = layout(graph)
    margin, head = 0.2, 0.45
    right = max([x + w / 2 for x, _, w, _ in boxes.values()] + [x + 0.6 for route in routes for x, _ in route])
    width = max(right + 2 * margin, 3.0)
    height = max(y + h / 2 for _, y, _, h in boxes.values()) + head + margin
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.text(width / 2, height - head / 2, graph.title, ha="center", va="center", fontsize=9, weight="bold")

    def at(x, y):                                      # layout inches (y down) to axes inches (y up)
        return margin + x, height - head - y

    for n in graph.nodes:
        x, y, w, h = boxes[n.id]
        (x, y), (fill, border, lw, dashed) = at(x, y), STYLES[n.kind]
        box = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.05", facecolor=fill,
                             edgecolor=border, lw=lw, linestyle="--" if dashed else "-")
        box.set_gid(f"node-{n.id}")
        ax.add_patch(box)
        ax.text(x, y, n.label, ha="center", va="center", fontsize=7, linespacing=1.25)
    for e, route in zip(graph.edges, routes):
        points = [at(x, y) for x, y in route]
        color = SHORTCUT if e.kind == "shortcut" else "#404040"
        arrow = FancyArrowPatch(path=Path(points, [Path.MOVETO] + [Path.LINETO] * (len(points) - 1)),
                                arrowstyle="-|>", mutation_scale=8, color=color,
                                lw=1.6 if e.kind == "shortcut" else 0.8)
        arrow.set_gid(f"{'shortcut' if e.kind == 'shortcut' else 'edge'}-{e.src}-{e.dst}")
        ax.add_patch(arrow)
        if e.kind != "data":                           # beside the edge's middle
            (x1, y1), (x2, y2) = points[len(points) // 2 - 1], points[len(points) // 2]
            ax.text((x1 + x2) / 2 + 0.05, (y1 + y2) / 2, e.kind, fontsize=6.5, color=color, ha="left", va="center")
    return save_figure(fig, fmt, dpi)                  # a huge graph stays under Agg's size limit
