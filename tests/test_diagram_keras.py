"""minires.viz.plot_model for a Keras user: Keras's keywords, labels that fit, dense blocks drawn as concatenations.

The expected dense-block structure comes from DenseNet's definition (Huang et
al. 2017, Figure 1 and Section 3): layer l of a block receives the
concatenation of the block input and the outputs of layers 1..l-1, and the
block returns the concatenation of all of them; with growth rate k a block on
c channels holds c + l*k channels after layer l. DenseNet-BC-40 has
(40 - 4) / 6 = 6 layers a block and k = 12. Nothing here is read back from
the code under test's own description of the model.
"""
import re
import shutil
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import minires.functional as F
from minires import models, nn
from minires.viz import model_diagram, plot_model, to_dot
from minires.viz.diagram import KERAS_KEYWORDS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYERS, GROWTH = 6, 12                                       # DenseNet-BC-40
BEFORE = {1: "stem", 2: "trans1", 3: "trans2"}               # what feeds each dense block
STEM_CHANNELS, TRANS = 2 * GROWTH, {2: 48, 3: 60}            # 2k; floor(0.5 * (c + 6k)) after blocks 1 and 2


def _by_id(diagram):
    return {n.id: n for n in diagram.nodes}


def _into(diagram, node_id):
    """{source name: edge kind} of the edges into a node."""
    nodes = _by_id(diagram)
    return {nodes[e.src].name: e.kind for e in diagram.edges if e.dst == node_id}


@pytest.fixture(scope="module")
def densenet():
    return model_diagram(models.densenet_bc_40(), input_shape=(1, 3, 32, 32))


# ---------------------------------------------------------------- dense blocks as data

def test_each_dense_layer_gets_the_concatenation_of_everything_before_it(densenet):
    nodes = densenet.nodes
    for b in (1, 2, 3):
        layer_ids = [n.id for n in nodes if n.kind == "layer" and n.name.startswith(f"block{b}.")]
        assert [_by_id(densenet)[i].name for i in layer_ids] == [f"block{b}.denselayer{i}" for i in range(1, 7)]
        assert _into(densenet, layer_ids[0]) == {BEFORE[b]: "main"}          # layer 1 sees the block input
        for i in range(2, LAYERS + 2):                                          # i = LAYERS + 1: the block's output
            concat = next(n for n in nodes if n.name == (f"block{b}.concat{i}" if i <= LAYERS else f"block{b}.concat"))
            assert concat.kind == "concat"
            sources = _into(densenet, concat.id)
            assert set(sources) == {BEFORE[b]} | {f"block{b}.denselayer{j}" for j in range(1, i)}
            assert [s for s, kind in sources.items() if kind == "main"] == [f"block{b}.denselayer{i - 1}"]
            c0 = STEM_CHANNELS if b == 1 else TRANS[b]
            assert concat.shape == (c0 + (i - 1) * GROWTH, 32 >> (b - 1), 32 >> (b - 1))
            if i <= LAYERS:
                assert _into(densenet, layer_ids[i - 1]) == {concat.name: "main"}


def test_concatenation_edges_count_and_the_main_path_is_one_chain(densenet):
    per_block = LAYERS * (LAYERS + 1) // 2                   # sum over concatenations of their earlier inputs
    assert len(densenet.concats) == 3 * per_block
    assert densenet.shortcuts == [] and densenet.note == ""
    main = [e for e in densenet.edges if e.kind == "main"]
    assert [e.src for e in main[1:]] == [e.dst for e in main[:-1]]
    assert main[0].src == densenet.nodes[0].id and main[-1].dst == densenet.nodes[-1].id
    names = [n.name for n in densenet.nodes]
    assert names[:3] == ["input", "stem", "block1.denselayer1"] and names[-2:] == ["head", "output"]


def test_densenet_draws_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_model(models.densenet_bc_40(), tmp_path / "d.svg", backend="matplotlib")


class Mixed(nn.Module):
    """Two branches on the same input, concatenated with the input itself (an Inception-style join),
    one of them through a functional ReLU the join sees before any module returns it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 2, 1)
        self.b = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return F.concat([F.relu(self.a(x)), self.b(x), x], dim=1)


class MixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.entry = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = Mixed()
        self.fc = nn.Linear(9, 2)

    def forward(self, x):
        return self.fc(F.flatten(F.adaptive_avg_pool2d(self.mix(self.entry(x)), 1)))


def test_a_users_own_concatenation_is_found_by_what_it_does():
    diagram = model_diagram(MixedNet(), input_shape=(1, 3, 8, 8))
    assert [(n.kind, n.name) for n in diagram.nodes] == [
        ("input", "input"), ("stem", "stem"), ("layer", "mix.a"), ("layer", "mix.b"), ("concat", "mix.concat"),
        ("head", "head"), ("output", "output")]
    nodes = {n.name: n for n in diagram.nodes}
    assert _into(diagram, nodes["mix.a"].id) == {"stem": "main"}
    assert _into(diagram, nodes["mix.b"].id) == {"stem": "branch"}  # not the node before it: a side edge
    assert _into(diagram, nodes["mix.concat"].id) == {"mix.a": "concat", "mix.b": "main", "stem": "concat"}
    assert nodes["mix.concat"].shape == (9, 8, 8)


def test_a_dense_block_on_its_own():
    diagram = model_diagram(models.DenseBlock(3, 8, 4))
    assert [n.kind for n in diagram.nodes] == ["input"] + ["layer", "concat"] * 3 + ["output"]
    assert [n.name for n in diagram.nodes if n.kind == "layer"] == ["denselayer1", "denselayer2", "denselayer3"]
    assert len(diagram.concats) == 3 * 4 // 2


# ---------------------------------------------------------------- both renderers draw the concatenations

def _svg_ids(path, prefix):
    return [e.get("id") for e in ET.parse(path).getroot().iter() if e.get("id", "").startswith(prefix)]


def test_dot_source_has_an_edge_per_concatenation_input(densenet):
    source = to_dot(densenet)
    lines = [line.strip() for line in source.splitlines() if 'id="concat-' in line]
    expected = {f"{e.src} -> {e.dst}" for e in densenet.concats}
    assert len(lines) == len(densenet.concats) and {line.split(" [")[0] for line in lines} == expected
    assert all('color="#b35900"' in line and "weight=0" in line for line in lines)


def test_matplotlib_draws_every_concatenation_edge(tmp_path, densenet):
    path = tmp_path / "d.svg"
    plot_model(models.densenet_bc_40(), path, input_shape=(1, 3, 32, 32), backend="matplotlib")
    drawn = _svg_ids(path, "concat-")
    assert sorted(drawn) == sorted(f"concat-{e.block}-{e.src}" for e in densenet.concats)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_draws_every_concatenation_edge(tmp_path, densenet):
    svg, png = tmp_path / "d.svg", tmp_path / "d.png"
    assert plot_model(models.densenet_bc_40(), svg, backend="graphviz").backend == "graphviz"
    assert len(_svg_ids(svg, "concat-")) == len(densenet.concats)
    plot_model(models.densenet_bc_40(), png, backend="graphviz", rankdir="LR", dpi=50)
    assert png.read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------- labels fit their boxes and the figure

class LongNames(nn.Module):
    """A block whose layers have long names and whose projection has many layers: long labels everywhere."""

    def __init__(self):
        super().__init__()
        self.the_first_convolution_of_a_rather_verbose_block = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.another_convolution_with_an_equally_long_name = nn.Conv2d(16, 16, 3, padding=1)
        self.projection_shortcut_with_several_layers = nn.Sequential(
            nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))

    def forward(self, x):
        out = self.another_convolution_with_an_equally_long_name(
            F.relu(self.the_first_convolution_of_a_rather_verbose_block(x)))
        return F.residual_add(out, self.projection_shortcut_with_several_layers(x))


def _words(text):
    return re.sub(r"\s+", " ", text).strip()


def _check_fit(diagram):
    """Every node's text is all there and inside its box; every text inside the figure; boxes never overlap."""
    fig = diagram.figure
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = {p.get_gid()[4:]: p.get_window_extent(renderer) for p in ax.patches
             if (p.get_gid() or "").startswith("box-")}
    texts = {t.get_gid(): t for t in ax.texts}
    frame = fig.bbox
    for gid, t in texts.items():
        box = t.get_window_extent(renderer)
        assert frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5, gid
        assert frame.y0 - 0.5 <= box.y0 and box.y1 <= frame.y1 + 0.5, gid
    for node in diagram.nodes:
        t = texts[f"label-{node.id}"]
        assert _words(t.get_text()) == _words(node.label)    # wrapped, never cut
        if node.id in boxes:
            inner, outer = t.get_window_extent(renderer), boxes[node.id]
            assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1, \
                f"{node.name}: text {inner} outside its box {outer}"
    ordered = [boxes[n.id] for n in diagram.nodes if n.id in boxes]
    for a, b in zip(ordered, ordered[1:]):
        assert not a.overlaps(b)
    return texts


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_long_labels_fit_their_boxes(tmp_path, rankdir):
    diagram = plot_model(LongNames(), tmp_path / "long.png", input_shape=(1, 3, 16, 16), backend="matplotlib",
                         rankdir=rankdir, show_dtype=True, show_trainable=True)
    texts = _check_fit(diagram)
    label = texts["label-shortcut-LongNames"].get_text()
    assert _words(label) == _words(diagram.shortcuts[0].label) and "\n" in label   # wrapped, all there
    assert len(diagram.nodes[1].label) > 90                     # longer than the old fixed box held on one line
    assert (tmp_path / "long.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("name, rankdir", [("resnet50", "TB"), ("densenet_bc_40", "LR"), ("highway20", "TB")])
def test_every_label_of_the_zoo_fits(tmp_path, name, rankdir):
    diagram = plot_model(models.get(name), tmp_path / "m.svg", backend="matplotlib", rankdir=rankdir,
                         show_shapes=True)
    _check_fit(diagram)
    assert "probe input of 3x32x32" in diagram.title


# ---------------------------------------------------------------- Keras's keywords

def test_a_keras_call_runs(tmp_path):
    out = tmp_path / "model.png"
    diagram = plot_model(models.resnet20(), to_file=str(out), show_shapes=True, show_layer_names=True,
                         rankdir="TB", expand_nested=False, dpi=96, show_dtype=False,
                         show_layer_activations=False, show_trainable=False, backend="matplotlib")
    assert out.read_bytes()[:8] == PNG_SIGNATURE and diagram.path == str(out)
    assert {n.name: n.shape for n in diagram.nodes}["layer2.0"] == (32, 16, 16)


def test_path_and_to_file(tmp_path):
    model = models.resnet20()
    with pytest.raises(TypeError, match="both path=.*and to_file="):
        plot_model(model, tmp_path / "a.png", to_file=tmp_path / "b.png")
    with pytest.raises(TypeError, match="missing the file.*to_file="):
        plot_model(model)
    assert not list(tmp_path.iterdir())


def test_unknown_keywords_name_the_accepted_ones():
    with pytest.raises(TypeError) as info:
        plot_model(models.resnet20(), "x.png", show_colors=True, layer_range=None)
    msg = str(info.value)
    assert "'layer_range', 'show_colors'" in msg
    for word in ("path", "input_shape", "backend") + KERAS_KEYWORDS:
        assert word in msg


@pytest.mark.parametrize("kwargs, kind, words", [
    ({"rankdir": "BT"}, ValueError, "rankdir"), ({"rankdir": "lr"}, ValueError, "'TB'"),
    ({"dpi": 0}, ValueError, "dpi"), ({"dpi": "high"}, ValueError, "dpi"), ({"dpi": True}, ValueError, "dpi"),
    ({"show_shapes": "yes"}, TypeError, "show_shapes"), ({"expand_nested": 1}, TypeError, "expand_nested"),
])
def test_bad_keyword_values(tmp_path, kwargs, kind, words):
    with pytest.raises(kind, match=words):
        plot_model(models.resnet20(), tmp_path / "x.png", backend="matplotlib", **kwargs)
    assert not list(tmp_path.iterdir())


def test_show_shapes_dtype_and_layer_names():
    model = models.resnet20()
    probe = {n.name: n for n in model_diagram(model, show_shapes=True).nodes}
    assert probe["layer3.0"].shape == (64, 8, 8)                 # the probe's 32x32, said in the title
    hidden = {n.name: n for n in model_diagram(model, input_shape=(1, 3, 32, 32), show_shapes=False).nodes}
    assert hidden["layer3.0"].shape is None and "\n" not in hidden["layer3.0"].label
    typed = {n.name: n.label for n in model_diagram(model.double(), input_shape=(1, 3, 32, 32), show_dtype=True).nodes}
    assert typed["layer2.0"] == "layer2.0: 3x3 conv 32 /2, 3x3 conv 32\n32x16x16 float64"
    assert typed["input"] == "input\n3x32x32 float64"
    unnamed = {n.name: n.label for n in model_diagram(models.resnet20(), show_layer_names=False).nodes}
    assert unnamed["layer2.0"] == "3x3 conv 32 /2, 3x3 conv 32" and unnamed["head"] == "global avg pool, fc 10"
    assert unnamed["input"] == "input"


def test_expand_nested_and_activations():
    model = models.resnet20()
    expanded = {n.name: n.label for n in model_diagram(model, expand_nested=True).nodes}
    assert expanded["layer1.0"] == "layer1.0:\n3x3 conv 16\nBN\nReLU\n3x3 conv 16\nBN"
    assert expanded["layer2.0"].endswith("BN") and "zero-pad" not in expanded["layer2.0"]   # the shortcut stays out
    active = {n.name: n.label for n in model_diagram(model, show_layer_activations=True).nodes}
    assert active["layer1.0"] == "layer1.0: 3x3 conv 16, ReLU, 3x3 conv 16"
    dense = {n.name: n.label for n in model_diagram(models.densenet_bc_40(), show_layer_activations=True).nodes}
    assert dense["block1.denselayer1"] == "block1.denselayer1: ReLU, 1x1 conv 48, 3x3 conv 12"
    big = model_diagram(models.densenet_bc_100(), expand_nested=False)
    assert all(n.label.count(",") < 8 for n in big.nodes)       # a dense block is no longer one long list


def test_show_trainable():
    model = models.resnet20()
    model.conv1.requires_grad_(False)
    model.layer1[0].requires_grad_(False)
    labels = {n.name: n.label for n in model_diagram(model, show_trainable=True).nodes}
    assert labels["stem"].endswith("\ntrainable: partly")       # conv1 frozen, bn1 not
    assert labels["layer1.0"].endswith("\ntrainable: no") and labels["layer1.1"].endswith("\ntrainable: yes")
    assert "trainable" not in labels["input"] + labels["layer1.0.add"]


def test_rankdir_and_dpi(tmp_path):
    import matplotlib.image
    model = models.resnet20()
    plot_model(model, tmp_path / "tb.png", backend="matplotlib")
    plot_model(model, tmp_path / "lr.png", backend="matplotlib", rankdir="LR")
    plot_model(model, tmp_path / "lr60.png", backend="matplotlib", rankdir="LR", dpi=60)
    tb, lr, lr60 = (matplotlib.image.imread(str(tmp_path / f)).shape for f in ("tb.png", "lr.png", "lr60.png"))
    assert tb[0] > tb[1] and lr[1] > lr[0]
    assert abs(lr60[1] / lr[1] - 0.5) < 0.02                   # 60 dpi against the default 120
    source = to_dot(model_diagram(model), rankdir="LR", dpi=200)
    assert "rankdir=LR" in source and "dpi=200" in source and "tailport=n, headport=n" in source
    assert np.all(["tailport=e" not in line for line in source.splitlines()])
    assert plot_model(model, tmp_path / "m.dot", rankdir="LR").path == str(tmp_path / "m.dot")
    assert "rankdir=LR" in (tmp_path / "m.dot").read_text()


def test_the_figure_comes_back_with_matplotlib_only(tmp_path, monkeypatch):
    assert plot_model(models.resnet20(), tmp_path / "a.svg", backend="matplotlib").figure is not None
    monkeypatch.setenv("PATH", str(tmp_path))                   # no dot: a .dot file needs none
    assert plot_model(models.resnet20(), tmp_path / "a.dot").figure is None
