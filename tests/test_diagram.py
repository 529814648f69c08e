"""minires.viz.plot_model: blocks and shortcut styles as in the paper's Figure 3, both renderers.

Solid bypass arrows for identity shortcuts, dashed for the ones that change
the shape (option-A zero-pad or a projection), none for plain blocks. The
expected blocks come from the paper's architectures (ResNet-20: the first
block of stages 2 and 3 changes the shape; ResNet-50 with option B: the first
block of every stage), not from the code under test.
"""
import os
import shutil
import stat
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import models, nn
from minires.models import ResidualBlock
from minires.viz import model_diagram, plot_model, to_dot
from ported_blocks import PaddedBlock, PortedBlock, PortedNet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESNET20_BLOCKS = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
RESNET20_DASHED = {"layer2.0", "layer3.0"}
RESNET50_DASHED = {"layer1.0", "layer2.0", "layer3.0", "layer4.0"}   # 64 -> 256 needs a projection too


def _styles(diagram):
    return {e.block: e.style for e in diagram.shortcuts}


def _dashed_groups(svg_path):
    """(ids of <g> groups holding a dashed stroke, number of dashed strokes outside any shortcut group)."""
    root = ET.parse(svg_path).getroot()
    groups, stray = set(), 0

    def walk(element, owner):
        gid = element.get("id", "")
        if element.tag.endswith("}g") and gid.startswith("shortcut-"):
            owner = gid
        dashed = "stroke-dasharray" in element.get("style", "") or element.get("stroke-dasharray")
        if dashed and "none" not in str(element.get("stroke-dasharray", "")):
            nonlocal stray
            if owner is None:
                stray += 1
            else:
                groups.add(owner)
        for child in element:
            walk(child, owner)

    walk(root, None)
    return groups, stray


def _shortcut_group_ids(svg_path):
    root = ET.parse(svg_path).getroot()
    return {e.get("id") for e in root.iter() if e.get("id", "").startswith("shortcut-")}


# ---------------------------------------------------------------- the diagram as data


def test_resnet20_shortcuts():
    diagram = model_diagram(models.resnet20())
    assert [e.block for e in diagram.shortcuts] == RESNET20_BLOCKS
    styles = _styles(diagram)
    assert {b for b, s in styles.items() if s == "dashed"} == RESNET20_DASHED
    assert sum(s == "solid" for s in styles.values()) == 7
    assert diagram.shortcuts[3].label == "zero-pad to 32 /2" and diagram.shortcuts[0].label == "identity"


def test_styles_follow_the_blocks_shortcut_modules():
    for model in (models.resnet20(), models.resnet18(), models.resnet20(shortcut="B"),
                  models.resnet20(shortcut="C"), models.preact_resnet110()):
        expected = {name: ("solid" if m.downsample is None else "dashed")
                    for name, m in model.named_modules() if isinstance(m, ResidualBlock)}
        assert _styles(model_diagram(model)) == expected
    assert set(_styles(model_diagram(models.resnet20(shortcut="C"))).values()) == {"dashed"}


def test_plain_network_has_no_shortcuts():
    diagram = model_diagram(models.plain20())
    assert diagram.shortcuts == []
    assert [n.name for n in diagram.nodes if n.kind == "block"] == RESNET20_BLOCKS
    assert not any(n.kind == "add" for n in diagram.nodes)


def test_resnet50_boxes_and_labels():
    diagram = model_diagram(models.resnet50())
    labels = {n.name: n.label for n in diagram.nodes}
    assert labels["stem"] == "stem: 7x7 conv 64 /2, BN, ReLU, 3x3 max pool /2"
    assert labels["layer2.0"] == "layer2.0: 1x1 conv 128, 3x3 conv 128 /2, 1x1 conv 512"
    assert labels["head"] == "head: global avg pool, fc 1000"
    assert [n.kind for n in diagram.nodes][:2] == ["input", "stem"] and diagram.nodes[-1].kind == "output"
    assert sum(n.kind == "block" for n in diagram.nodes) == 3 + 4 + 6 + 3
    styles = _styles(diagram)
    assert {b for b, s in styles.items() if s == "dashed"} == RESNET50_DASHED and len(styles) == 16
    assert diagram.shortcuts[3].label == "1x1 conv 512 /2, BN"
    paper = model_diagram(models.resnet50(stride_on_1x1=True))
    assert {n.name: n.label for n in paper.nodes}["layer2.0"] == \
        "layer2.0: 1x1 conv 128 /2, 3x3 conv 128, 1x1 conv 512"


def test_resnet20_labels_and_shapes():
    model = models.resnet20().train()
    diagram = model_diagram(model, input_shape=(1, 3, 32, 32))
    nodes = {n.name: n for n in diagram.nodes}
    assert nodes["layer2.0"].label == "layer2.0: 3x3 conv 32 /2, 3x3 conv 32\n32x16x16"
    assert nodes["stem"].layers == ["3x3 conv 16", "BN", "ReLU"] and nodes["stem"].shape == (16, 32, 32)
    assert nodes["layer3.2"].shape == (64, 8, 8) and nodes["head"].shape == (10,)
    assert nodes["input"].shape == (3, 32, 32)
    assert all(m.training for m in model.modules()) and not any(m._forward_hooks for m in model.modules())


def test_shortcuts_bypass_their_block():
    diagram = model_diagram(models.resnet20())
    main = {(e.src, e.dst) for e in diagram.edges if e.kind == "main"}
    block_id = {n.name: n.id for n in diagram.nodes}
    kinds = {n.id: n.kind for n in diagram.nodes}
    for e in diagram.shortcuts:
        assert (e.src, block_id[e.block]) in main and (block_id[e.block], e.dst) in main
        assert kinds[e.dst] == "add"
    # the forward path is one chain from input to output
    chain = [e for e in diagram.edges if e.kind == "main"]
    assert [e.src for e in chain[1:]] == [e.dst for e in chain[:-1]]
    assert chain[0].src == diagram.nodes[0].id and chain[-1].dst == diagram.nodes[-1].id


# ---------------------------------------------------------------- matplotlib


def test_matplotlib_png(tmp_path):
    path = tmp_path / "resnet20.png"
    diagram = plot_model(models.resnet20(), path, input_shape=(1, 3, 32, 32), backend="matplotlib")
    assert diagram.backend == "matplotlib" and diagram.path == str(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > image.shape[1] > 200          # a tall drawing, top to bottom


@pytest.mark.parametrize("name, dashed, count", [("resnet20", RESNET20_DASHED, 9), ("plain20", set(), 0),
                                                 ("resnet50", RESNET50_DASHED, 16)])
def test_matplotlib_svg_dashes_exactly_the_projections(tmp_path, name, dashed, count):
    path = tmp_path / f"{name}.svg"
    plot_model(models.get(name), path, backend="matplotlib")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    groups, stray = _dashed_groups(path)
    assert groups == {f"shortcut-{b}" for b in dashed} and stray == 0
    assert len(_shortcut_group_ids(path)) == count
    if not dashed:
        assert "stroke-dasharray" not in path.read_text()


@pytest.mark.parametrize("backend", ["matplotlib", "graphviz"])
def test_a_png_is_stored_in_64_colours(tmp_path, backend):
    """As draw_graph's: a few pastel fills and dark text look the same in a palette of 64 colours."""
    if backend == "graphviz" and shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    from PIL import Image
    path = tmp_path / "r.png"
    plot_model(models.resnet20(), path, backend=backend)
    image = Image.open(path)
    assert image.mode == "P" and len(image.getcolors()) <= 64


def test_matplotlib_leaves_pyplot_alone(tmp_path):
    import matplotlib
    backend = matplotlib.get_backend()
    plot_model(models.resnet20(), tmp_path / "r.png", backend="matplotlib")
    assert matplotlib.get_backend() == backend


# ---------------------------------------------------------------- graphviz


def test_dot_source():
    source = to_dot(models.resnet20())
    assert source.startswith('digraph "CifarResNet" {') and source.rstrip().endswith("}")
    shortcut_lines = [line for line in source.splitlines() if 'id="shortcut-' in line]
    assert len(shortcut_lines) == 9
    dashed = {line.split('id="shortcut-')[1].split('"')[0] for line in shortcut_lines if "style=dashed" in line}
    assert dashed == RESNET20_DASHED
    assert sum("style=solid" in line for line in shortcut_lines) == 7
    assert 'label="layer2.0: 3x3 conv 32 /2, 3x3 conv 32"' in source
    plain = to_dot(models.plain20())
    assert "style=dashed" not in plain and "shortcut-" not in plain and "layer3.2" in plain


def test_dot_file(tmp_path):
    model = models.resnet50()
    diagram = plot_model(model, tmp_path / "r50.dot")
    text = (tmp_path / "r50.dot").read_text()
    assert text == to_dot(model_diagram(model)) and diagram.backend == "graphviz"
    assert text.count("style=dashed") == 4
    assert 'label=" 1x1 conv 512 /2, BN"' in text


def test_dot_quotes_are_escaped():
    diagram = model_diagram(models.resnet20())
    diagram.model = 'my "net"\\'
    assert 'digraph "my \\"net\\"\\\\" {' in to_dot(diagram)


def test_both_drawings_quote_dot_strings_alike():
    """plot_model's diagram and draw_graph's autograd graph write their DOT strings with one quote."""
    from minires.viz import draw_graph, watch_graph
    x = minires.Tensor(np.ones((1, 2), dtype=np.float32), requires_grad=True)
    with watch_graph(names={"x": x}):
        y = (x * 2).sum()
    title = 'a "title"\\ on\ntwo lines'
    diagram = model_diagram(models.resnet20())
    diagram.model = title
    expected = 'digraph "a \\"title\\"\\\\ on\\ntwo lines" {'
    assert to_dot(diagram).startswith(expected) and draw_graph(y, title=title).to_dot().startswith(expected)


def _fake_dot(folder, body):
    """A `dot` on PATH that logs its arguments and stdin, then runs ``body`` (sh)."""
    script = folder / "dot"
    script.write_text(f'#!/bin/sh\nPATH=/usr/bin:/bin\necho "$@" > "{folder}/args"\ncat > "{folder}/stdin"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_graphviz_is_called_with_the_source(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, "printf fake")                          # the image on stdout; plot_model writes the file
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "r.svg"
    diagram = plot_model(models.resnet20(), out)                 # auto: dot is on PATH
    assert diagram.backend == "graphviz" and out.read_text() == "fake"
    assert (bin_dir / "args").read_text().split() == ["-Tsvg"]
    assert (bin_dir / "stdin").read_text() == to_dot(model_diagram(models.resnet20()))


def test_graphviz_failure(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, "echo 'syntax error' >&2\nexit 3")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(RuntimeError, match="exit 3.*syntax error"):
        plot_model(models.resnet20(), tmp_path / "a.png", backend="graphviz")
    with pytest.warns(RuntimeWarning, match="matplotlib instead"):
        diagram = plot_model(models.resnet20(), tmp_path / "b.png")        # auto falls back
    assert diagram.backend == "matplotlib" and (tmp_path / "b.png").read_bytes()[:8] == PNG_SIGNATURE


def test_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                           # an empty folder: no dot
    with pytest.raises(RuntimeError, match="`dot`.*not on PATH"):
        plot_model(models.resnet20(), tmp_path / "a.png", backend="graphviz")
    assert plot_model(models.resnet20(), tmp_path / "b.svg").backend == "matplotlib"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("name, dashed", [("resnet20", RESNET20_DASHED), ("plain20", set())])
def test_graphviz_renders(tmp_path, name, dashed):
    png, svg = tmp_path / "m.png", tmp_path / "m.svg"
    assert plot_model(models.get(name), png, backend="graphviz").backend == "graphviz"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    plot_model(models.get(name), svg, backend="graphviz")
    groups, stray = _dashed_groups(svg)
    assert groups == {f"shortcut-{b}" for b in dashed} and stray == 0
    assert len(_shortcut_group_ids(svg)) == (9 if name == "resnet20" else 0)


# ---------------------------------------------------------------- bad input


def test_bad_arguments(tmp_path):
    model = models.resnet20()
    with pytest.raises(ValueError, match="format.*'x.jpg'"):
        plot_model(model, "x.jpg")
    with pytest.raises(ValueError, match="backend"):
        plot_model(model, tmp_path / "x.png", backend="tikz")
    with pytest.raises(ValueError, match="Graphviz source"):
        plot_model(model, tmp_path / "x.dot", backend="matplotlib")
    with pytest.raises(TypeError, match="Module"):
        plot_model("resnet20", tmp_path / "x.png")
    with pytest.raises(ValueError, match="input_shape"):
        plot_model(model, tmp_path / "x.png", input_shape=(3, 0))
    assert not os.listdir(tmp_path)


def test_models_without_blocks_and_a_lone_block():
    mlp = model_diagram(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert [n.label for n in mlp.nodes] == ["input", "Sequential: fc 4, ReLU, fc 2", "output"]
    assert mlp.shortcuts == [] and mlp.note.startswith("no module of Sequential ends in F.residual_add")
    block = model_diagram(models.resnet20().layer2[0])
    assert [n.kind for n in block.nodes] == ["input", "block", "add", "output"]
    assert [(e.style, e.label) for e in block.shortcuts] == [("dashed", "zero-pad to 32 /2")]


@pytest.mark.parametrize("pool, channels, label", [
    ("subsample", "append", "zero-pad to 32 /2"), ("avg", "append", "avg-pool /2, zero-pad to 32"),
    ("subsample", "centre", "zero-pad centred to 32 /2"), ("avg", "centre", "avg-pool /2, zero-pad centred to 32")])
def test_an_option_a_shortcut_says_its_form(pool, channels, label):
    """PadChannels' pool and channel placement show in the label when they are not the default."""
    model = models.resnet20(pad_pool=pool, pad_channels=channels)
    diagram = model_diagram(model)
    assert {e.block: e.label for e in diagram.shortcuts if e.style == "dashed"} == \
        {"layer2.0": label, "layer3.0": label.replace("32", "64")}
    assert f'label=" {label}"' in to_dot(diagram)
    expanded = {n.name: n.label for n in model_diagram(model, expand_nested=True).nodes}["layer2.0"]
    assert "zero-pad" not in expanded and "avg-pool" not in expanded                # the branch leaves it out


# ---------------------------------------------------------------- blocks found by what they do


def _ported_net():
    return PortedNet([PortedBlock(8, 8), PortedBlock(8, 16, 2), PaddedBlock(16, 32, 2)])


class FlatNet(nn.Module):
    """No residual add; its classifier only takes 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(F.flatten(F.relu(self.conv(x))))


def test_a_users_own_blocks_are_drawn_with_their_shortcuts():
    diagram = model_diagram(_ported_net())
    assert [n.name for n in diagram.nodes if n.kind == "block"] == ["body.0", "body.1", "body.2"]
    assert [(e.block, e.style, e.label) for e in diagram.shortcuts] == [
        ("body.0", "solid", "identity"), ("body.1", "dashed", "1x1 conv 16 /2, BN"),
        ("body.2", "dashed", "shortcut")]
    labels = {n.name: n.label for n in diagram.nodes}
    assert labels["body.1"] == "body.1: 3x3 conv 16 /2 (c1), 3x3 conv 16 (c2)"    # the projection left out
    assert labels["body.2"] == "body.2: 3x3 conv 32 /2 (c1), 3x3 conv 32 (c2)"
    assert labels["stem"] == "stem: 3x3 conv 8 (entry)" and labels["head"] == "head: global avg pool, fc 10"
    assert diagram.note == "" and diagram.title == "PortedNet"


def test_a_users_own_blocks_in_svg(tmp_path):
    path = tmp_path / "ported.svg"
    plot_model(_ported_net(), path, input_shape=(1, 3, 16, 16), backend="matplotlib")
    groups, stray = _dashed_groups(path)
    assert groups == {"shortcut-body.1", "shortcut-body.2"} and stray == 0
    assert _shortcut_group_ids(path) == {"shortcut-body.0", "shortcut-body.1", "shortcut-body.2"}


def test_gated_shortcuts_are_not_identities():
    styles = {(e.style, e.label) for e in model_diagram(models.highway20()).shortcuts}
    assert styles == {("dashed", "shortcut")}                 # C(x) * S(x): computed in the block's forward


def test_a_model_without_residual_add_says_so(tmp_path):
    with pytest.warns(UserWarning, match="no module of FlatNet ends in F.residual_add: drawn as a chain"):
        diagram = plot_model(FlatNet(), tmp_path / "flat.svg", input_shape=(1, 1, 8, 8), backend="matplotlib")
    assert not any(n.kind in ("block", "add") for n in diagram.nodes) and diagram.shortcuts == []
    assert "no module of FlatNet ends in F.residual_add" in (tmp_path / "flat.svg").read_text()
    assert "label=\"FlatNet\\nno module of FlatNet ends in F.residual_add" in to_dot(diagram)


def test_the_probe_input_and_its_failure():
    # no input_shape: one 32x32 image with the first layer's channels finds the blocks; no shapes shown
    diagram = model_diagram(models.resnet20(in_channels=1))
    assert len(diagram.shortcuts) == 9 and all(n.shape is None for n in diagram.nodes)
    with pytest.raises(ValueError, match=r"probe input of shape \(1, 1, 32, 32\) failed.*pass input_shape"):
        model_diagram(FlatNet())
    assert model_diagram(FlatNet(), input_shape=(1, 1, 8, 8)).nodes[-1].shape == (3,)
