"""``plot_model(model, path)``: the architecture as a diagram, drawn as in Figure 3 of He et al. 2015.

The stem, one box per block (its name and its weight layers, e.g.
"layer2.0: 3x3 conv 32 /2, 3x3 conv 32"), then the head. A block is any
module whose forward ends in ``F.residual_add``, found by one forward pass
under ``record_residuals(model)``, whatever its class. Its shortcut is an
arrow that bypasses the box into a "+" node, drawn from the add's record:
solid for an identity shortcut (the block's input itself), dashed for
anything else (an option-A zero-pad, a 1x1 projection: labelled with the
shortcut module's layers). A plain block (``F.residual_add(out, None)``)
has no shortcut; a model without any block is drawn as a chain of layers,
with a note saying so.

The diagram is first built as plain data (``model_diagram``: nodes and edges
with their styles), then rendered by Graphviz's ``dot`` where it is on PATH,
else by Matplotlib (no pyplot, so no global backend is touched).
"""
import os
import shutil
import subprocess
import textwrap
import warnings
from dataclasses import dataclass, field

from .. import nn
from ..autograd import no_grad
from ..checks import pair
from ..models.blocks import PadChannels
from ..residual import record_residuals
from .summary import _check_input_shape, _example_input, _no_blocks_note

BACKENDS = ("auto", "graphviz", "matplotlib")
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
_MAX_LAYERS_IN_LABEL = 8
PROBE_SIZE = 32                    # side of the probe image when no input_shape is given (CIFAR's)


@dataclass
class DiagramNode:
    """A box of the diagram: kind is "input", "stem", "layers", "head", "block", "add" or "output"."""

    id: str
    kind: str
    name: str
    layers: list = field(default_factory=list)
    shape: tuple = None            # output shape per image, when an input shape was given

    @property
    def label(self):
        """The node's text: "layer2.0: 3x3 conv 32 /2, 3x3 conv 32" (and its output shape, if known)."""
        if self.kind == "add":
            return "+"
        layers = self.layers
        if len(layers) > _MAX_LAYERS_IN_LABEL:
            layers = layers[:_MAX_LAYERS_IN_LABEL - 1] + [f"... ({len(layers)} layers)"]
        text = f"{self.name}: {', '.join(layers)}" if layers else self.name
        if self.shape is not None:
            text += "\n" + "x".join(str(s) for s in self.shape)
        return text


@dataclass
class DiagramEdge:
    """An arrow: kind "main" (the forward path) or "shortcut" (a block's bypass); style "solid" or "dashed"."""

    src: str
    dst: str
    kind: str = "main"
    style: str = "solid"
    label: str = ""
    block: str = None              # the block a shortcut belongs to ("layer2.0")


@dataclass
class Diagram:
    """A model's diagram as data: nodes top to bottom, edges with their styles; ``plot_model`` returns it."""

    model: str
    nodes: list
    edges: list
    backend: str = None
    path: str = None
    note: str = ""                 # why there are no blocks, if there are none

    @property
    def title(self):
        """The model's name, and the note under it."""
        return f"{self.model}\n{self.note}" if self.note else self.model

    @property
    def shortcuts(self):
        """The shortcut edges, one per residual block that has a shortcut, in order."""
        return [e for e in self.edges if e.kind == "shortcut"]


# ------------------------------------------------------------------ describing layers

def _stride(s):
    sh, sw = pair(s)
    if sh == sw:
        return f" /{sh}" if sh != 1 else ""
    return f" /{sh}x{sw}"


def _describe(name, m, tag=True):
    """A layer in the paper's words: "3x3 conv 64 /2", "BN", "3x3 max pool /2", "fc 1000"; None to omit.

    With ``tag`` a convolution not called conv... says its name: "1x1 conv 16 (gate)".
    """
    attr = name.rsplit(".", 1)[-1]
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        text = f"{kh}x{kw} conv {m.out_channels}{_stride(m.stride)}"
        if tag and not attr.startswith("conv") and not attr.isdigit():
            text += f" ({attr})"
        return text
    if isinstance(m, nn.BatchNorm2d):
        return "BN"
    if isinstance(m, nn.ReLU):
        return "ReLU"
    if isinstance(m, nn.AvgPool2d):  # before MaxPool2d: AvgPool2d subclasses it
        k = pair(m.kernel_size)
        return f"{k[0]}x{k[1]} avg pool{_stride(m.stride)}"
    if isinstance(m, nn.MaxPool2d):
        k = pair(m.kernel_size)
        return f"{k[0]}x{k[1]} max pool{_stride(m.stride)}"
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return "global avg pool" if pair(m.output_size) == (1, 1) else f"adaptive avg pool {m.output_size}"
    if isinstance(m, nn.Linear):
        return f"fc {m.out_features}"
    if isinstance(m, PadChannels):
        return f"zero-pad to {m.out_channels}{_stride(m.stride)}"
    if isinstance(m, (nn.Identity, nn.Flatten)):
        return None
    return type(m).__name__


def _leaves(name, module):
    """(qualified name, leaf module) under ``module`` in definition order."""
    kids = list(module.named_children())
    if not kids:
        yield name, module
        return
    for n, m in kids:
        yield from _leaves(f"{name}.{n}" if name else n, m)


def _block_layers(name, block, shortcut):
    """The weight layers of a block's residual branch (its convolutions, as the paper's figures show).

    ``shortcut`` is the path of the block's shortcut module, whose layers are left out (None: none).
    """
    leaves = [(n, m) for n, m in _leaves(name, block)
              if shortcut is None or not (n == shortcut or n.startswith(shortcut + "."))]
    convs = [_describe(n, m) for n, m in leaves if isinstance(m, nn.Conv2d)]
    return convs or [d for d in (_describe(n, m) for n, m in leaves) if d]


def _shortcut(record, modules):
    """(style, label) of a block's shortcut, from its record: the identity solid, anything else dashed."""
    if record.identity:
        return "solid", "identity"
    module = modules.get(record.shortcut_module)
    if module is None:                 # computed by functional calls in the block's own forward
        return "dashed", "shortcut"
    parts = [d for d in (_describe(n, m, tag=False) for n, m in _leaves(record.shortcut_module, module)) if d]
    return "dashed", ", ".join(parts) or type(module).__name__


def _units(model, blocks):
    """The model as a sequence: ("block", name, module) per block (a path in ``blocks``), ("leaf", ...) otherwise."""
    seen, root = set(), type(model).__name__

    def walk(name, module):
        if id(module) in seen:
            return
        seen.add(id(module))
        if (name or root) in blocks:
            yield "block", name, module
            return
        kids = list(module.named_children())
        if not kids:
            yield "leaf", name, module
            return
        for n, m in kids:
            yield from walk(f"{name}.{n}" if name else n, m)

    return list(walk("", model))


def _probe_shape(model):
    """An input for a model given no input_shape: one PROBE_SIZE x PROBE_SIZE image, or one vector for an MLP.

    The channels (or features) are those of the first Conv2d, BatchNorm2d or Linear in definition order.
    32 x 32 goes through every model of minires.models, the ImageNet ones included (down to 1 x 1).
    """
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return (1, m.in_channels, PROBE_SIZE, PROBE_SIZE)
        if isinstance(m, nn.BatchNorm2d):
            return (1, m.num_features, PROBE_SIZE, PROBE_SIZE)
        if isinstance(m, nn.Linear):
            return (1, m.in_features)
    raise ValueError(f"plot_model: finding the blocks of {type(model).__name__} takes a forward pass, and no "
                     "first Conv2d or Linear tells its input; pass input_shape=(1, C, H, W)")


def _forward(model, input_shape):
    """One forward pass on zeros (eval mode and no_grad, the modes restored after), recording the residual adds.

    Returns the records, {id(module): output shape per image}, and the input and output shapes per image.
    Without ``input_shape`` the model is probed (``_probe_shape``); a probe that fails says so.
    """
    shape = _probe_shape(model) if input_shape is None else _check_input_shape(input_shape)
    named = list(model.named_modules())
    shapes = {}

    def hook(module, inputs, output):
        if id(module) not in shapes and hasattr(output, "shape"):
            shapes[id(module)] = tuple(int(s) for s in output.shape[1:])

    modes = [(m, m.training) for _, m in named]
    handles = [m.register_forward_hook(hook) for _, m in named]
    try:
        model.eval()
        with no_grad(), record_residuals(model) as records:
            out = model(_example_input(model, shape))
    except Exception as exc:
        if input_shape is not None:
            raise
        raise ValueError(f"plot_model: finding the blocks of {type(model).__name__} takes a forward pass, and "
                         f"the probe input of shape {shape} failed ({type(exc).__name__}: {exc}); pass "
                         "input_shape=(1, C, H, W) as your data has it") from exc
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    return records, shapes, tuple(int(s) for s in shape[1:]), tuple(int(s) for s in out.shape[1:])


def model_diagram(model, input_shape=None):
    """Build the diagram of ``model`` as data (a ``Diagram`` of nodes and styled edges), without drawing it.

    Blocks are the modules whose forward ends in ``F.residual_add``, found by one forward pass on zeros of
    ``input_shape`` (batch included) or, without it, of a probe: one 32x32 image with the first layer's
    channels. The layers around the blocks are grouped into stem, head and (between blocks) "layers" boxes.
    With ``input_shape`` the boxes also show their output shapes. A model without blocks is one chain of
    layers, and the diagram's ``note`` says why (``plot_model`` also warns, and writes it under the title).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"plot_model: expected a minires.nn.Module, got {type(model).__name__}")
    records, shapes, in_shape, out_shape = _forward(model, input_shape)
    if input_shape is None:            # a probe's shapes are not the user's: show none
        shapes, in_shape, out_shape = {}, None, None
    blocks = {}
    for r in records:
        if r.block is not None:
            blocks.setdefault(r.block, r)  # a block called twice: its first call
    note = _no_blocks_note(model, records)
    if note:
        note += ": drawn as a chain of layers, without blocks"
    modules = dict(model.named_modules())
    top_level_containers = {n for n, m in model.named_children() if next(m.named_children(), None)}

    # group consecutive non-block layers that share a top-level container (or are top-level layers)
    groups = []
    for kind, name, module in _units(model, blocks):
        if kind == "block":
            groups.append(("block", name, module))
            continue
        head = name.split(".")[0]
        key = head if head in top_level_containers else None
        if groups and groups[-1][0] == "group" and groups[-1][1] == key:
            groups[-1][2].append((name, module))
        else:
            groups.append(("group", key, [(name, module)]))

    nodes, edges = [], []

    def add_node(kind, name, layers=(), shape=None):
        node = DiagramNode(f"n{len(nodes)}", kind, name, list(layers), shape)
        nodes.append(node)
        return node

    prev = add_node("input", "input", shape=in_shape)
    # top-level layers before every block and container are the stem, after all of them the head
    structural = [i for i, g in enumerate(groups) if g[0] == "block" or g[1] is not None]
    for i, (kind, key, body) in enumerate(groups):
        if kind == "block":
            name, block = key or type(model).__name__, body
            record = blocks[name]
            node = add_node("block", name, _block_layers(key, block, record.shortcut_module), shapes.get(id(block)))
            edges.append(DiagramEdge(prev.id, node.id))
            if record.has_shortcut:
                plus = add_node("add", f"{name}.add")
                edges.append(DiagramEdge(node.id, plus.id))
                style, label = _shortcut(record, modules)
                edges.append(DiagramEdge(prev.id, plus.id, "shortcut", style, label, name))
                node = plus
            prev = node
            continue
        if key is not None:
            gkind, gname = "layers", key
        elif len(groups) == 1:
            gkind, gname = "layers", type(model).__name__
        elif i < min(structural, default=len(groups) - 1) or (not structural and i == 0):
            gkind, gname = "stem", "stem"
        elif i > max(structural, default=0):
            gkind, gname = "head", "head"
        else:
            gkind, gname = "layers", "layers"
        layers = [d for d in (_describe(n, m) for n, m in body) if d]
        convs = [_describe(n, m) for n, m in body if isinstance(m, nn.Conv2d)]
        if key is not None and convs:          # a container (e.g. a dense block): its weight layers
            layers = convs
        node = add_node(gkind, gname, layers, shapes.get(id(body[-1][1])))
        edges.append(DiagramEdge(prev.id, node.id))
        prev = node
    out = add_node("output", "output", shape=out_shape)
    edges.append(DiagramEdge(prev.id, out.id))
    return Diagram(type(model).__name__, nodes, edges, note=note)


# ------------------------------------------------------------------ Graphviz

def _dot_quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_NODE_STYLE = {
    "input": 'shape=plaintext, style=""',
    "output": 'shape=plaintext, style=""',
    "stem": 'fillcolor="#eeeeee"',
    "head": 'fillcolor="#eeeeee"',
    "layers": 'fillcolor="#eeeeee"',
    "block": 'fillcolor="#e3edf9"',
    "add": 'shape=circle, width=0.3, height=0.3, fixedsize=true, fillcolor="white", fontsize=12',
}


def to_dot(diagram):
    """The Graphviz source of a diagram (or of a model): shortcuts are ``style=dashed`` or ``style=solid`` edges."""
    if isinstance(diagram, nn.Module):
        diagram = model_diagram(diagram)
    lines = [f"digraph {_dot_quote(diagram.model)} {{",
             '  graph [rankdir=TB, nodesep=0.4, ranksep=0.22, fontname="Helvetica", '
             f'label={_dot_quote(diagram.title)}, labelloc=t];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, height=0.3, group=main];',
             '  edge [arrowsize=0.6, fontname="Helvetica", fontsize=8];']
    for node in diagram.nodes:
        lines.append(f"  {node.id} [label={_dot_quote(node.label)}, {_DOT_NODE_STYLE[node.kind]}];")
    for e in diagram.edges:
        if e.kind == "shortcut":
            lines.append(f"  {e.src} -> {e.dst} [style={e.style}, label={_dot_quote(' ' + e.label)}, "
                         f"tailport=e, headport=e, weight=0, id={_dot_quote('shortcut-' + e.block)}];")
        else:
            lines.append(f"  {e.src} -> {e.dst};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_graphviz(diagram, path, fmt):
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("plot_model: Graphviz's `dot` program is not on PATH; install Graphviz "
                           "or use backend='matplotlib'")
    proc = subprocess.run([dot, f"-T{fmt}", "-o", path], input=to_dot(diagram).encode(),
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"plot_model: `dot -T{fmt}` failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")


# ------------------------------------------------------------------ Matplotlib

_MPL_COLORS = {"stem": "#eeeeee", "head": "#eeeeee", "layers": "#eeeeee", "block": "#e3edf9"}


def _render_matplotlib(diagram, path, fmt):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path

    fig_w, x0, box_w, lane = 8.0, 3.2, 5.0, 6.1        # inches: figure width, column centre, box width, bypass
    gap, radius, line_h, fontsize = 0.24, 0.1, 0.16, 8
    wrapped = {n.id: "\n".join(textwrap.fill(part, 72) for part in n.label.split("\n")) for n in diagram.nodes}
    heights = {}
    for n in diagram.nodes:
        lines = wrapped[n.id].count("\n") + 1
        heights[n.id] = 2 * radius if n.kind == "add" else (
            line_h * lines + 0.08 if n.kind in ("input", "output") else line_h * lines + 0.2)
    note = textwrap.fill(diagram.note, 90)
    top = 0.55 + (0.15 * (note.count("\n") + 1) if note else 0)
    total = top + sum(heights.values()) + gap * (len(diagram.nodes) - 1) + 0.3
    centre, cursor = {}, top
    for n in diagram.nodes:                             # y measured down from the top, then flipped
        centre[n.id] = total - (cursor + heights[n.id] / 2)
        cursor += heights[n.id] + gap

    def top_of(i):
        return centre[i] + heights[i] / 2

    def bottom_of(i):
        return centre[i] - heights[i] / 2

    fig = Figure(figsize=(fig_w, total))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(0, total)
    ax.axis("off")
    ax.text(x0, total - 0.28, diagram.model, ha="center", va="center", fontsize=11, weight="bold")
    if note:
        ax.text(x0, total - 0.45, note, ha="center", va="top", fontsize=7, color="#9c1f1f")

    for n in diagram.nodes:
        y = centre[n.id]
        if n.kind == "add":
            ax.add_patch(Circle((x0, y), radius, facecolor="white", edgecolor="black", lw=0.9))
            ax.text(x0, y, "+", ha="center", va="center", fontsize=9)
            continue
        if n.kind not in ("input", "output"):
            h = heights[n.id]
            ax.add_patch(FancyBboxPatch((x0 - box_w / 2, y - h / 2), box_w, h,
                                        boxstyle="round,pad=0,rounding_size=0.06",
                                        facecolor=_MPL_COLORS[n.kind], edgecolor="black", lw=0.8))
        ax.text(x0, y, wrapped[n.id], ha="center", va="center", fontsize=fontsize,
                style="italic" if n.kind in ("input", "output") else "normal")

    for e in diagram.edges:
        if e.kind == "main":
            ax.add_patch(FancyArrowPatch((x0, bottom_of(e.src)), (x0, top_of(e.dst)), arrowstyle="-|>",
                                         mutation_scale=9, shrinkA=0, shrinkB=0, lw=0.9, color="black"))
            continue
        y_start = bottom_of(e.src) - gap / 2          # where the shortcut leaves the forward path
        y_end = centre[e.dst]
        verts = [(x0, y_start), (lane, y_start), (lane, y_end), (x0 + radius, y_end)]
        arrow = FancyArrowPatch(path=Path(verts, [Path.MOVETO] + [Path.LINETO] * 3), arrowstyle="-|>",
                                mutation_scale=9, lw=1.0, color="#1f4e9c",
                                linestyle="--" if e.style == "dashed" else "-")
        arrow.set_gid(f"shortcut-{e.block}")
        ax.add_patch(arrow)
        ax.text(lane + 0.08, (y_start + y_end) / 2, e.label, ha="left", va="center", fontsize=7,
                color="#1f4e9c")

    dpi = min(120.0, 30000.0 / total)                  # keep a very deep net's PNG under Agg's size limit
    fig.savefig(path, format=fmt, dpi=dpi)


def plot_model(model, path, input_shape=None, backend="auto"):
    """Draw ``model``'s architecture to ``path`` (.png, .svg or .pdf; .dot writes the Graphviz source) and
    return the ``Diagram`` drawn, whose edges carry the shortcut styles.

    ``backend="auto"`` uses Graphviz's ``dot`` where it is on PATH, else Matplotlib; "graphviz" or "matplotlib"
    forces one. The blocks are found by one forward pass (see ``model_diagram``), on zeros of ``input_shape``
    (batch included; the boxes then show their output shapes too) or of a 32x32 probe image. A model with
    no block is drawn as a chain of layers, with a warning and a note under the title.
    """
    if backend not in BACKENDS:
        raise ValueError(f"plot_model: backend must be one of {BACKENDS}, got {backend!r}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"plot_model: cannot tell the image format from {path!r}; "
                         f"use one of {', '.join(sorted(FORMATS))}")
    fmt = FORMATS[ext]
    diagram = model_diagram(model, input_shape)
    if diagram.note:
        warnings.warn(f"plot_model: {diagram.note}", stacklevel=2)
    if fmt == "dot":
        if backend == "matplotlib":
            raise ValueError("plot_model: a .dot file is Graphviz source; choose .png, .svg or .pdf for matplotlib")
        with open(path, "w") as fh:
            fh.write(to_dot(diagram))
        diagram.backend, diagram.path = "graphviz", path
        return diagram
    chosen = backend
    if backend == "auto":
        chosen = "graphviz" if shutil.which("dot") else "matplotlib"
    if chosen == "graphviz":
        try:
            _render_graphviz(diagram, path, fmt)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            if backend == "graphviz":
                raise
            warnings.warn(f"{exc}; drawing with matplotlib instead", RuntimeWarning, stacklevel=2)
            chosen = "matplotlib"
    if chosen == "matplotlib":
        _render_matplotlib(diagram, path, fmt)
    diagram.backend, diagram.path = chosen, path
    return diagram
