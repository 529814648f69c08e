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

A module whose forward ends in ``F.concat`` (DenseNet's dense block) is drawn
by what it joins, read from the same pass's autograd graph: one box per layer
it calls and a "concat" node before each layer that gets a concatenation, with
an edge from every earlier output that the concatenation holds (kind "concat"),
as in Figure 1 of Huang et al. 2017: each layer's output feeds all later layers.

The diagram is first built as plain data (``model_diagram``: nodes and edges
with their styles), then drawn (``diagram_draw``: its DOT source and its figure)
by Graphviz's ``dot`` where it is on PATH, else by Matplotlib (no pyplot, so no
global backend is touched), as ``draw_graph`` draws (``render``: the choice, ``dot``, PNGs in 64 colours).
``plot_model`` also takes the keywords of Keras's ``plot_model`` (``to_file``,
``show_shapes``, ``rankdir``, ...), so a ported script runs unchanged.
"""
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..tensor import Tensor
from . import diagram_draw
from .architecture import (PROBE_SIZE, _block_layers, _concat_blocks, _describe, _forward, _shortcut,  # noqa: F401
                           _sources, _trainable, _units, _weight_layers)
from .render import check_backend, draw, image_format, run_dot, save_figure
from .summary import _no_blocks_note

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
RANKDIRS = ("TB", "LR")
KERAS_KEYWORDS = ("to_file", "show_shapes", "show_dtype", "show_layer_names", "rankdir", "expand_nested", "dpi",
                  "show_layer_activations", "show_trainable")
_MAX_LAYERS_IN_LABEL = 8


@dataclass
class DiagramNode:
    """A box of the diagram: kind is "input", "stem", "layers", "head", "block", "add", "layer" (one layer of a
    concatenating block), "concat" or "output"."""

    id: str
    kind: str
    name: str
    layers: list = field(default_factory=list)
    shape: tuple = None            # output shape per image, when shapes are shown
    dtype: str = None              # output dtype, with show_dtype
    trainable: str = None          # "yes", "no" or "partly", with show_trainable (None: no parameters)
    show_name: bool = True         # False with show_layer_names=False
    expanded: bool = False         # expand_nested: every layer, one a line

    @property
    def label(self):
        """The node's text: "layer2.0: 3x3 conv 32 /2, 3x3 conv 32" (and its output shape, if known)."""
        if self.kind in ("add", "concat"):
            text = "+" if self.kind == "add" else "concat"
            return text if self.kind == "add" or self.shape is None else text + "\n" + self._shape_line()
        layers = self.layers
        if not self.expanded and len(layers) > _MAX_LAYERS_IN_LABEL:
            layers = layers[:_MAX_LAYERS_IN_LABEL - 1] + [f"... ({len(layers)} layers)"]
        body = ("\n" if self.expanded else ", ").join(layers)
        if not body:
            text = self.name
        elif not self.show_name:
            text = body
        else:
            text = f"{self.name}:\n{body}" if self.expanded else f"{self.name}: {body}"
        if self.shape is not None or self.dtype is not None:
            text += "\n" + self._shape_line()
        if self.trainable is not None:
            text += f"\ntrainable: {self.trainable}"
        return text

    def _shape_line(self):
        parts = [] if self.shape is None else ["x".join(str(s) for s in self.shape)]
        return " ".join(parts + ([self.dtype] if self.dtype else []))


@dataclass
class DiagramEdge:
    """An arrow: kind "main" (the forward path), "shortcut" (a block's bypass), "concat" (an earlier output
    into a concatenation) or "branch" (an earlier output into a layer); style "solid" or "dashed"."""

    src: str
    dst: str
    kind: str = "main"
    style: str = "solid"
    label: str = ""
    block: str = None              # the block a shortcut belongs to ("layer2.0"), the concat node of a concat edge


@dataclass
class Diagram:
    """A model's diagram as data: nodes top to bottom, edges with their styles; ``plot_model`` returns it."""

    model: str
    nodes: list
    edges: list
    backend: str = None
    path: str = None
    note: str = ""                 # why there are no blocks, if there are none
    probe: tuple = None            # the probe input whose shapes are shown (show_shapes without input_shape)
    figure: object = None          # the Matplotlib Figure, when that renderer drew it

    @property
    def title(self):
        """The model's name, and the notes under it."""
        lines = [self.model] + ([self.note] if self.note else [])
        if self.probe is not None:
            lines.append(f"output shapes for a probe input of {'x'.join(str(s) for s in self.probe)} "
                         "(pass input_shape for yours)")
        return "\n".join(lines)

    @property
    def shortcuts(self):
        """The shortcut edges, one per residual block that has a shortcut, in order."""
        return [e for e in self.edges if e.kind == "shortcut"]

    @property
    def concats(self):
        """The edges that carry an earlier output into a concatenation (all but the main one into each)."""
        return [e for e in self.edges if e.kind == "concat"]


# ------------------------------------------------------------------ building the diagram

def _options(show_shapes=None, show_dtype=False, show_layer_names=True, expand_nested=False,
             show_layer_activations=False, show_trainable=False):
    opts = dict(show_shapes=show_shapes, show_dtype=show_dtype, show_layer_names=show_layer_names,
                expand_nested=expand_nested, show_layer_activations=show_layer_activations,
                show_trainable=show_trainable)
    for key, value in opts.items():
        if not isinstance(value, (bool, np.bool_)) and not (key == "show_shapes" and value is None):
            raise TypeError(f"plot_model: {key} must be True or False, got {value!r}")
    return opts


class _Builder:
    """The nodes and edges so far, and what each node shows (shapes, dtypes, trainable, names)."""

    def __init__(self, opts, shapes):
        self.opts, self.shapes, self.nodes, self.edges = opts, shapes, [], []

    def node(self, kind, name, layers=(), owned=(), output=None):
        """A new node; ``output`` is the tensor it gives (its shape and dtype are shown if asked)."""
        node = DiagramNode(f"n{len(self.nodes)}", kind, name, list(layers),
                           trainable=_trainable(owned) if self.opts["show_trainable"] else None,
                           show_name=self.opts["show_layer_names"], expanded=self.opts["expand_nested"])
        if isinstance(output, Tensor):
            node.shape = tuple(int(s) for s in output.shape[1:]) if self.shapes else None
            node.dtype = str(output.dtype) if self.opts["show_dtype"] else None
        self.nodes.append(node)
        return node

    def edge(self, src, dst, kind="main", style="solid", label="", block=None):
        self.edges.append(DiagramEdge(src.id if isinstance(src, DiagramNode) else src,
                                      dst.id, kind, style, label, block))

    def before(self, node):
        """The id of the node made just before ``node``: an edge from it is the main path."""
        return self.nodes[self.nodes.index(node) - 1].id


def model_diagram(model, input_shape=None, *, show_shapes=None, show_dtype=False, show_layer_names=True,
                  expand_nested=False, show_layer_activations=False, show_trainable=False):
    """Build the diagram of ``model`` as data (a ``Diagram`` of nodes and styled edges), without drawing it.

    Blocks are the modules whose forward ends in ``F.residual_add``, found by one forward pass on zeros of
    ``input_shape`` (batch included) or, without it, of a probe: one 32x32 image with the first layer's
    channels. Modules whose forward ends in ``F.concat`` are drawn layer by layer with their concatenations.
    The layers around them are grouped into stem, head and (between blocks) "layers" boxes.
    Shapes are shown with ``input_shape`` (``show_shapes=None``), always (``True``: a probe's, said in the
    title) or never (``False``); the other keywords are ``plot_model``'s. A model without blocks is one
    chain of layers, and the diagram's ``note`` says why (``plot_model`` also warns, and writes it under the title).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"plot_model: expected a minires.nn.Module, got {type(model).__name__}")
    opts = _options(show_shapes, show_dtype, show_layer_names, expand_nested, show_layer_activations,
                    show_trainable)
    records, calls, x = _forward(model, input_shape)
    shown = opts["show_shapes"] if opts["show_shapes"] is not None else input_shape is not None
    out_of = {k: out for k, (_, _, out) in calls.items()}
    blocks = {}
    for r in records:
        if r.block is not None:
            blocks.setdefault(r.block, r)  # a block called twice: its first call
    dense = _concat_blocks(model, calls)
    note = "" if dense else _no_blocks_note(model, records)
    if note:
        note += ": drawn as a chain of layers, without blocks"
    modules = dict(model.named_modules())
    top_level_containers = {n for n, m in model.named_children() if next(m.named_children(), None)}

    # group consecutive non-block layers that share a top-level container (or are top-level layers)
    groups = []
    for kind, name, module in _units(model, blocks, dense):
        if kind in ("block", "dense"):
            groups.append((kind, name, module))
            continue
        head = name.split(".")[0]
        key = head if head in top_level_containers else None
        if groups and groups[-1][0] == "group" and groups[-1][1] == key:
            groups[-1][2].append((name, module))
        else:
            groups.append(("group", key, [(name, module)]))

    b = _Builder(opts, shown)
    prev = b.node("input", "input", output=x)
    # top-level layers before every block and container are the stem, after all of them the head
    structural = [i for i, g in enumerate(groups) if g[0] != "group" or g[1] is not None]
    for i, (kind, key, body) in enumerate(groups):
        if kind == "block":
            name, block = key or type(model).__name__, body
            record = blocks[name]
            node = b.node("block", name, _block_layers(key, block, record.shortcut_module, opts), [block],
                          out_of.get(id(block)))
            b.edge(prev, node)
            if record.has_shortcut:
                plus = b.node("add", f"{name}.add")
                b.edge(node, plus)
                style, label = _shortcut(record, modules)
                b.edge(prev, plus, "shortcut", style, label, name)
                node = plus
            prev = node
            continue
        if kind == "dense":
            prev = _dense(b, key or type(model).__name__, key, body, calls, prev)
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
        if key is not None:                    # a container (e.g. a transition): its weight layers
            layers = _weight_layers(body, opts)
        node = b.node(gkind, gname, layers, [m for _, m in body], out_of.get(id(body[-1][1])))
        b.edge(prev, node)
        prev = node
    out = b.node("output", "output", output=out_of.get(id(model)))
    b.edge(prev, out)
    return Diagram(type(model).__name__, b.nodes, b.edges, note=note,
                   probe=tuple(int(s) for s in x.shape[1:]) if shown and input_shape is None else None)


def _dense(b, name, path, block, calls, prev):
    """The nodes and edges of a module whose forward ends in F.concat (``name``); returns its last node.

    One "layer" node per child it calls, in call order; before each child whose input is a concatenation, a
    "concat" node with an edge from every node whose output the concatenation holds (the one just before it
    on the main path, the others kind "concat"); the block's own result is the last concat node.
    """
    _, inputs, output = calls[id(block)]
    known = {id(t): prev.id for t in inputs if isinstance(t, Tensor)}

    def join(tensor, cname):
        sources, joined = _sources(tensor, known, prev.id)
        if not joined:
            return sources, None
        node = b.node("concat", cname, output=tensor)
        for s in sources:
            b.edge(s, node, "main" if s == b.before(node) else "concat", block=cname)
        return [node.id], node

    kids = sorted(((n, m) for n, m in block.named_children() if id(m) in calls), key=lambda c: calls[id(c[1])][0])
    for k, (n, m) in enumerate(kids, 1):
        qualified = f"{path}.{n}" if path else n
        sources, _ = join(calls[id(m)][1][0], f"{name}.concat{k}")
        node = b.node("layer", qualified, _block_layers(qualified, m, None, b.opts), [m], calls[id(m)][2])
        for s in sources:
            b.edge(s, node, "main" if s == b.before(node) else "branch", block=qualified)
        known[id(calls[id(m)][2])] = node.id
    sources, last = join(output, f"{name}.concat")
    return last or next(n for n in b.nodes if n.id == sources[0])


# ------------------------------------------------------------------ drawing

def to_dot(diagram, rankdir="TB", dpi=None):
    """The Graphviz source of a diagram (or of a model): shortcuts are ``style=dashed`` or ``style=solid`` edges."""
    if isinstance(diagram, nn.Module):
        diagram = model_diagram(diagram)
    return diagram_draw.dot_source(diagram, _rankdir(rankdir), _dpi(dpi))


def _rankdir(rankdir):
    if rankdir not in RANKDIRS:
        raise ValueError(f"plot_model: rankdir must be 'TB' (top to bottom) or 'LR' (left to right), got {rankdir!r}")
    return rankdir


def _dpi(dpi):
    if dpi is not None and (isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.number)) or not dpi > 0):
        raise ValueError(f"plot_model: dpi must be a positive number (or None), got {dpi!r}")
    return dpi


def plot_model(model, path=None, input_shape=None, backend="auto", *, to_file=None, show_shapes=None,
               show_dtype=False, show_layer_names=True, rankdir="TB", expand_nested=False, dpi=None,
               show_layer_activations=False, show_trainable=False, **unknown):
    """Draw ``model``'s architecture to ``path`` (.png, .svg or .pdf; .dot writes the Graphviz source) and
    return the ``Diagram`` drawn, whose edges carry the shortcut styles (and ``figure``, with Matplotlib).

    ``backend="auto"`` uses Graphviz's ``dot`` where it is on PATH, else Matplotlib; "graphviz" or "matplotlib"
    forces one. The blocks are found by one forward pass (see ``model_diagram``), on zeros of ``input_shape``
    (batch included; the boxes then show their output shapes too) or of a 32x32 probe image. A model with
    no block is drawn as a chain of layers, with a warning and a note under the title.

    Keras's keywords are taken too, so ``plot_model(model, to_file="m.png", show_shapes=True)`` runs:

    - ``to_file``: the same as ``path`` (give one of them);
    - ``show_shapes``: output shapes in the boxes (default None: when ``input_shape`` is given; True without
      it shows the probe's, and the title says so); ``show_dtype``: the output dtypes too;
    - ``show_layer_names``: the module path before each box's layers (default True here, False in Keras 3);
    - ``rankdir``: "TB" top to bottom, "LR" left to right; ``dpi``: the PNG's resolution (default: Graphviz's
      96, Matplotlib's 120; a very large drawing is capped under Agg's size limit);
    - ``expand_nested``: every layer of each box, one a line, where the boxes normally list the weight layers;
    - ``show_layer_activations``: activations (ReLU ...) are modules of their own here, listed in the stem and
      head; this adds them to the block boxes' lists of weight layers;
    - ``show_trainable``: "trainable: yes/no/partly" under each box whose layers have parameters.
    """
    if unknown:
        raise TypeError(f"plot_model: unexpected keyword argument(s) {', '.join(repr(k) for k in sorted(unknown))}; "
                        f"it takes path, input_shape, backend and Keras's {', '.join(KERAS_KEYWORDS)}")
    if path is not None and to_file is not None:
        raise TypeError(f"plot_model: got both path={path!r} and to_file={to_file!r}; give the file once")
    if path is None and to_file is None:
        raise TypeError("plot_model: missing the file to draw to: plot_model(model, 'model.png') "
                        "or, as in Keras, plot_model(model, to_file='model.png')")
    check_backend(backend, "plot_model")
    rankdir, dpi = _rankdir(rankdir), _dpi(dpi)
    path = os.fspath(path if path is not None else to_file)
    fmt = image_format(path, FORMATS, "plot_model")
    if fmt == "dot" and backend == "matplotlib":
        raise ValueError("plot_model: a .dot file is Graphviz source; choose .png, .svg or .pdf for matplotlib")
    diagram = model_diagram(model, input_shape, show_shapes=show_shapes, show_dtype=show_dtype,
                            show_layer_names=show_layer_names, expand_nested=expand_nested,
                            show_layer_activations=show_layer_activations, show_trainable=show_trainable)
    if diagram.note:
        warnings.warn(f"plot_model: {diagram.note}", stacklevel=2)
    if fmt == "dot":
        with open(path, "w") as fh:
            fh.write(diagram_draw.dot_source(diagram, rankdir, dpi))
        diagram.backend, diagram.path = "graphviz", path
        return diagram
    figures = []

    def with_matplotlib():
        figures.append(diagram_draw.figure(diagram, rankdir))
        return save_figure(figures[0], fmt, diagram_draw.DPI if dpi is None else dpi)

    data, diagram.backend = draw(fmt, backend, lambda: run_dot(diagram_draw.dot_source(diagram, rankdir, dpi), fmt,
                                                               "plot_model"), with_matplotlib)
    with open(path, "wb") as fh:
        fh.write(data)
    diagram.path, diagram.figure = path, (figures[0] if figures else None)
    return diagram
