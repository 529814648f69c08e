"""minires.viz.draw_graph: the graph autograd built, its gradient norms, residual adds, modules as boxes.

The expected graphs are written out by hand from the ops the code calls (relu(conv(x) + x):
Conv2d, Add, Relu and five edges) and from the paper's ResNet-20 (a stem of conv, BN, ReLU;
three stages of three blocks; pool, fc, loss), never read back from the code under test. The
gradient norms are checked against ``.grad`` (kept with ``retain_grad``) and against the
residual records, both computed without the drawing.
"""
import base64
import os
import shutil
import stat
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import autograd, models
from minires.viz import draw_graph, watch_graph

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BLOCKS = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
STEM_AND_HEAD = ["Conv2d", "BatchNorm", "Relu", "AdaptiveAvgPool2d", "Reshape", "Linear", "CrossEntropy"]
RESNET20_LEAVES = {"x", "conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias", "tensor (no grad)"}


def _rng():
    return np.random.default_rng(0)


def _t(shape, grad=True, rng=None):
    rng = rng or _rng()
    return minires.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=grad)


def _norm(a):
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64)))


def _svg_ids(path):
    return {e.get("id") for e in ET.parse(path).getroot().iter() if e.get("id")}


def _edges(graph):
    """Edges as (source name, destination name, kind)."""
    names = {n.id: n.name for n in graph.nodes}
    return sorted((names[e.src], names[e.dst], e.kind) for e in graph.edges)


@pytest.fixture(scope="module")
def resnet20_run():
    """A resnet20 forward and backward on two 8x8 images, watched; and the residual records seen beside it."""
    minires.manual_seed(0)
    model = models.get("resnet20").train()
    x = _t((2, 3, 8, 8), grad=False)
    labels = minires.tensor(np.array([1, 7]))
    with minires.record_residuals(model) as records, watch_graph(model) as watch:
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
    return model, loss, records, watch


# ------------------------------------------------------------------ the engine's function_hook

def test_function_hook_sees_every_function_as_it_is_linked():
    seen, inner = [], []
    x = _t((3,))
    with autograd.function_hook(lambda fn, out: seen.append((type(fn).__name__, out))):
        y = (x * 2).relu()
        with autograd.function_hook(lambda fn, out: inner.append(type(fn).__name__)):
            z = y.sum()
        with minires.no_grad():
            x * 3                                      # no graph: nothing to see
    assert [name for name, _ in seen] == ["Mul", "Relu", "Sum"] and inner == ["Sum"]
    assert seen[1][1] is y and seen[2][1] is z and y.grad_fn.inputs[0] is seen[0][1]
    x * 4                                              # outside: no hook left behind
    assert len(seen) == 3 and not getattr(autograd._state, "function_hooks", [])


# ------------------------------------------------------------------ structure

def test_relu_of_conv_plus_x_has_exactly_its_three_functions_and_five_edges():
    x, w = _t((2, 3, 5, 5)), _t((3, 3, 3, 3))
    y = F.relu(F.conv2d(x, w, padding=1) + x)
    graph = draw_graph(y, names={"x": x, "w": w})       # before backward: the graph still stands
    assert [(n.kind, n.name) for n in graph.nodes] == [
        ("leaf", "x"), ("leaf", "w"), ("op", "Conv2d"), ("op", "Add"), ("op", "Relu")]
    assert _edges(graph) == sorted([("x", "Conv2d", "data"), ("w", "Conv2d", "data"), ("Conv2d", "Add", "data"),
                                    ("x", "Add", "data"), ("Add", "Relu", "data")])
    conv = graph.node("Conv2d")
    assert conv.shape == (2, 3, 5, 5) and conv.dtype == "float32" and conv.grad_norm is None
    assert graph.node("w").shape == (3, 3, 3, 3)


def test_residual_add_edges_say_branch_and_shortcut():
    x, w = _t((2, 3, 4, 4)), _t((3, 3, 1, 1))
    y = F.residual_add(F.conv2d(x, w), x, name="block")
    graph = draw_graph(y, names={"x": x, "w": w})
    assert _edges(graph) == sorted([("x", "Conv2d", "data"), ("w", "Conv2d", "data"),
                                    ("Conv2d", "ResidualAdd + ReLU", "branch"), ("x", "ResidualAdd + ReLU", "shortcut")])
    add = graph.node("ResidualAdd + ReLU")
    assert add.kind == "add" and add.module == "block"   # the name given to residual_add
    plain = draw_graph(F.residual_add(F.conv2d(x, w), x, relu=False), names={"x": x, "w": w})
    assert {n.name for n in plain.nodes} >= {"ResidualAdd"}


def test_unnamed_leaves_and_constants():
    x, c = _t((4,)), minires.tensor(np.ones(4, np.float32))
    graph = draw_graph((x * c).sum())
    assert [(n.kind, n.name) for n in graph.nodes] == [
        ("leaf", "leaf"), ("constant", "tensor (no grad)"), ("op", "Mul"), ("op", "Sum")]
    assert graph.node("Sum").shape == () and "scalar" in graph.node("Sum").label


# ------------------------------------------------------------------ gradient norms

def _block(rng):
    x = _t((2, 4, 6, 6), rng=rng)
    w1, w2 = _t((4, 4, 3, 3), rng=rng), _t((4, 4, 3, 3), rng=rng)
    g, b = minires.tensor(np.ones(4, np.float32), requires_grad=True), minires.tensor(np.zeros(4, np.float32),
                                                                                    requires_grad=True)
    return x, {"x": x, "w1": w1, "w2": w2, "gamma": g, "beta": b}


def test_gradient_norms_are_those_of_grad_and_the_adds_those_of_its_record():
    x, names = _block(np.random.default_rng(1))
    R = minires.tensor(np.random.default_rng(2).standard_normal((2, 4, 6, 6)).astype(np.float32))
    with minires.record_residuals() as records, watch_graph(names=names):
        h = F.relu(F.batch_norm(F.conv2d(x, names["w1"], padding=1), None, None, names["gamma"], names["beta"],
                                training=True)).retain_grad()
        f = F.conv2d(h, names["w2"], padding=1).retain_grad()
        y = F.residual_add(f, x, name="block").retain_grad()
        loss = (y * R).sum()
        loss.backward()
    graph = draw_graph(loss)                           # after a plain backward: the watch kept it
    for name, t in names.items():
        assert graph.node(name).grad_norm == pytest.approx(_norm(t.grad.numpy()), rel=1e-6)
    assert graph.node("Relu").grad_norm == pytest.approx(_norm(h.grad.numpy()), rel=1e-6)
    convs = [n for n in graph.nodes if n.name == "Conv2d"]
    assert convs[1].grad_norm == pytest.approx(_norm(f.grad.numpy()), rel=1e-6)
    add = graph.node("ResidualAdd + ReLU")
    assert add.grad_norm == pytest.approx(_norm(y.grad.numpy()), rel=1e-6)
    assert graph.node("Mul").grad_norm == pytest.approx(_norm(np.ones((2, 4, 6, 6))), rel=1e-6)
    assert graph.node("Sum").grad_norm == 1.0
    (record,) = records
    assert add.via_shortcut == pytest.approx(_norm(record.via_shortcut), rel=1e-6)
    assert add.via_residual == pytest.approx(_norm(record.via_residual), rel=1e-6)
    assert add.via_shortcut != add.via_residual and "shortcut" in add.label and "branch" in add.label


def test_a_graph_kept_by_retain_graph_is_drawn_without_a_watch():
    x, w = _t((2, 3, 4, 4)), _t((3, 3, 1, 1))
    f = F.conv2d(x, w).retain_grad()
    y = F.residual_add(f, x)
    loss = (y * y).sum()
    loss.backward(retain_graph=True)
    graph = draw_graph(loss, names={"x": x, "w": w})
    assert graph.node("x").grad_norm == pytest.approx(_norm(x.grad.numpy()), rel=1e-6)
    assert graph.node("Conv2d").grad_norm == pytest.approx(_norm(f.grad.numpy()), rel=1e-6)
    assert graph.node("Mul").grad_norm is None        # kept no .grad, and no watch saw it
    assert graph.node("ResidualAdd + ReLU").via_residual == pytest.approx(_norm(y.grad_fn.record.via_residual))


def test_a_freed_graph_without_a_watch_is_refused_with_the_ways_out():
    x = _t((3,))
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="freed.*retain_graph=True.*watch_graph"):
        draw_graph(loss)


# ------------------------------------------------------------------ modules as boxes

def test_resnet20_at_depth_2_is_the_stem_nine_blocks_and_the_head(resnet20_run):
    model, loss, records, _ = resnet20_run
    graph = draw_graph(loss, depth=2)
    boxes = [n for n in graph.nodes if n.kind == "module"]
    assert [b.name for b in boxes] == BLOCKS and {b.module for b in boxes} == {"BasicBlock"}
    assert [n.name for n in graph.nodes if n.kind == "op"] == STEM_AND_HEAD
    assert {n.name for n in graph.nodes if n.kind in ("leaf", "constant")} == RESNET20_LEAVES
    assert len(graph.nodes) == 9 + 7 + 7
    chain = ["Relu"] + BLOCKS + ["AdaptiveAvgPool2d"]
    assert all((a, b, "data") in _edges(graph) for a, b in zip(chain, chain[1:]))
    assert len(graph.edges) == 2 + 3 + 1 + 1 + 8 + 1 + 1 + 3 + 2   # stem, blocks, head and loss
    for b in boxes:                                     # six weights each; five ops and the add, + a pad
        assert b.params == 6 and (b.ops > 6 if b.name in ("layer2.0", "layer3.0") else b.ops == 6)
        record = next(r for r in records if r.block == b.name)
        assert b.via_shortcut == pytest.approx(_norm(record.via_shortcut), rel=1e-6)
        assert b.via_residual == pytest.approx(_norm(record.via_residual), rel=1e-6)
    assert graph.node("conv1.weight").grad_norm == pytest.approx(_norm(model.conv1.weight.grad.numpy()), rel=1e-6)


def test_resnet20_at_depth_1_is_three_stages_and_every_op_is_somewhere(resnet20_run):
    _, loss, _, _ = resnet20_run
    stages, blocks, full = (draw_graph(loss, depth=d) for d in (1, 2, 99))
    assert [n.name for n in stages.nodes if n.kind == "module"] == ["layer1", "layer2", "layer3"]
    assert len(stages.nodes) == 3 + 7 + 7 and len(stages.edges) == len(blocks.edges) - 6
    assert draw_graph(loss, depth="blocks").nodes == blocks.nodes
    every_op = sum(n.kind in ("op", "add") for n in full.nodes)
    for g in (stages, blocks):
        assert sum(n.ops for n in g.nodes if n.kind == "module") + 7 == every_op
    assert not any(n.kind == "module" for n in full.nodes)
    assert sum(n.kind == "add" for n in full.nodes) == 9
    assert sum(e.kind == "shortcut" for e in full.edges) == 9 and sum(e.kind == "branch" for e in full.edges) == 9
    ops = [n for n in full.nodes if n.kind == "op" and n.name == "Conv2d"]
    assert ops[1].module == "layer1.0.conv1"            # an op says the module it ran in
    whole = draw_graph(loss, depth=0)
    assert [n.name for n in whole.nodes] == ["x", "CifarResNet", "tensor (no grad)", "CrossEntropy"]


def test_a_large_graph_collapses_by_itself_and_depth_needs_a_watch(resnet20_run):
    _, loss, _, _ = resnet20_run
    auto = draw_graph(loss)
    assert auto.depth == 2 and len(auto.nodes) <= minires.viz.graph.MAX_NODES
    x = _t((3,))
    with pytest.raises(ValueError, match="watch_graph"):
        draw_graph((x * x).sum(), depth=1)


def test_a_projection_shortcut_is_inside_its_block():
    minires.manual_seed(0)
    block = models.BasicBlock(4, 8, stride=2, shortcut="B").train()
    x = _t((2, 4, 6, 6))
    with watch_graph(block):
        loss = block(x).sum()
        loss.backward()
    full = draw_graph(loss)
    assert sum(n.name == "Conv2d" for n in full.nodes) == 3
    (edge,) = [e for e in full.edges if e.kind == "shortcut"]
    assert {n.id: n.name for n in full.nodes}[edge.src] == "BatchNorm"   # the projection's BN feeds the add
    assert "downsample" in {n.id: n.module for n in full.nodes}[edge.src]
    box = draw_graph(loss, depth=0)
    assert [(n.kind, n.name) for n in box.nodes] == [("leaf", "x"), ("module", "BasicBlock"), ("op", "Sum")]
    assert box.nodes[1].ops == 8 and box.nodes[1].params == 9


def test_watch_graph_leaves_no_hook_behind():
    model = models.get("resnet20")
    before = [len(m._forward_hooks) for m in model.modules()]
    with pytest.raises(ValueError):
        with watch_graph(model):
            raise ValueError("inside")
    assert [len(m._forward_hooks) for m in model.modules()] == before
    assert not getattr(autograd._state, "function_hooks", [])


# ------------------------------------------------------------------ files and display

def _small_graph():
    x, w = _t((2, 3, 4, 4)), _t((3, 3, 1, 1))
    with watch_graph(names={"x": x, "w": w}):
        loss = F.residual_add(F.conv2d(x, w), x).sum()
        loss.backward()
    return loss


def test_png_and_svg_with_matplotlib(tmp_path):
    loss = _small_graph()
    graph = draw_graph(loss, tmp_path / "g.png", backend="matplotlib")
    assert graph.backend == "matplotlib" and (tmp_path / "g.png").read_bytes().startswith(PNG_SIGNATURE)
    graph.save(tmp_path / "g.svg", backend="matplotlib")
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "ResidualAdd + ReLU" in svg and "|grad|" in svg
    assert {"shortcut-t0-n1", "node-n1", "node-t0"} <= _svg_ids(tmp_path / "g.svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_png_and_svg_with_graphviz(tmp_path):
    loss = _small_graph()
    graph = draw_graph(loss, tmp_path / "g.svg", backend="graphviz")
    svg = (tmp_path / "g.svg").read_text()
    assert graph.backend == "graphviz" and "<svg" in svg and "ResidualAdd + ReLU" in svg
    assert {"shortcut-t0-n1", "node-n1", "node-t0"} <= _svg_ids(tmp_path / "g.svg")
    graph.save(tmp_path / "g.png")
    assert graph.backend == "graphviz" and (tmp_path / "g.png").read_bytes().startswith(PNG_SIGNATURE)


def test_auto_draws_with_matplotlib_where_dot_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # an empty folder: no dot
    graph = draw_graph(_small_graph(), tmp_path / "g.png")
    assert graph.backend == "matplotlib" and (tmp_path / "g.png").read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(RuntimeError, match="`dot`.*not on PATH"):
        graph.save(tmp_path / "h.png", backend="graphviz")


def test_a_failing_dot_falls_back_with_a_warning(tmp_path, monkeypatch):
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\necho 'syntax error' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    with pytest.warns(RuntimeWarning, match="syntax error"):
        graph = draw_graph(_small_graph(), tmp_path / "g.png")
    assert graph.backend == "matplotlib"


def test_other_suffixes_and_bad_arguments_are_refused(tmp_path):
    loss = _small_graph()
    for name in ("g.pdf", "g.dot", "g"):
        with pytest.raises(ValueError, match=r"draw_graph: cannot tell the image format .* end in \.png or \.svg"):
            draw_graph(loss, tmp_path / name)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="backend"):
        draw_graph(loss, backend="tikz")
    with pytest.raises(ValueError, match="depth"):
        draw_graph(loss, depth=-1)
    with pytest.raises(TypeError, match="tensor"):
        draw_graph(np.ones(3))


def test_a_notebook_shows_one_png_and_dot_source_has_the_shortcut():
    graph = draw_graph(_small_graph())
    bundle = graph._repr_mimebundle_()
    assert set(bundle) == {"image/png", "text/plain"} and "AutogradGraph" in bundle["text/plain"]
    assert base64.b64decode(bundle["image/png"]).startswith(PNG_SIGNATURE)
    source = graph.to_dot()
    assert source.startswith("digraph") and 'label=" shortcut"' in source and 'label=" branch"' in source
