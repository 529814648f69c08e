"""Gradient flow: the per-block norms agree with the engine's gradients and records."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import models, nn
from ported_blocks import PortedBlock, PortedNet
from minires.viz.gradflow import (gradient_flow, plot_block_contributions, plot_gradient_norms,
                                  plot_training_curves)


def _batch(n=8, size=16):
    rng = np.random.default_rng(0)
    return (minires.tensor(rng.standard_normal((n, 3, size, size)).astype(np.float32)),
            minires.tensor(np.arange(n) % 10))


def test_block_norms_match_the_records_and_the_input_gradient():
    minires.manual_seed(0)
    model = models.resnet20()
    x, y = _batch()
    with minires.record_residuals() as records:
        flow = gradient_flow(model, x, y)
    assert [b.name for b in flow.blocks] == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert len(records) == 9
    for block, record in zip(flow.blocks, records):
        assert block.identity == pytest.approx(np.linalg.norm(record.via_shortcut), rel=1e-6)
        assert block.residual == pytest.approx(np.linalg.norm(record.via_residual), rel=1e-6)
        # the total is measured independently (the gradient retained at the block's input tensor)
        assert block.total == pytest.approx(np.linalg.norm(record.via_shortcut + record.via_residual), rel=1e-4)


def test_zero_branch_sends_everything_through_the_identity():
    minires.manual_seed(1)
    model = models.resnet20(zero_init_residual=True).eval()
    flow = gradient_flow(model, *_batch())
    for b in flow.blocks:
        assert b.residual == 0.0
        assert b.total == pytest.approx(b.identity, rel=1e-6)


def test_plain_network_has_only_the_layer_path():
    minires.manual_seed(2)
    flow = gradient_flow(models.plain20(), *_batch())
    assert len(flow.blocks) == 9
    assert all(b.identity == 0.0 and b.residual == b.total > 0 for b in flow.blocks)


def test_layer_rows_are_the_weight_gradients():
    minires.manual_seed(3)
    model = models.resnet20()
    flow = gradient_flow(model, *_batch())
    rows = {r.name: r for r in flow.layers}
    conv = model.layer2[0].conv1
    assert rows["layer2.0.conv1"].grad_norm == pytest.approx(np.linalg.norm(conv.weight.grad.numpy()), rel=1e-6)
    assert rows["layer2.0.conv1"].ratio == pytest.approx(
        np.linalg.norm(conv.weight.grad.numpy()) / np.linalg.norm(conv.weight.numpy()), rel=1e-6)
    assert len(flow.layers) == 19 + 19 + 1  # convolutions, batch norms, fc


def test_plots_are_figures_that_save(tmp_path):
    minires.manual_seed(4)
    flows = {name: gradient_flow(models.get(name), *_batch()) for name in ("plain20", "resnet20")}
    history = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_acc": 1 - 0.5 / e,
                "test_acc": 1 - 0.6 / e} for e in (1, 2, 3)]
    for i, fig in enumerate([plot_gradient_norms(flows), plot_block_contributions(flows["resnet20"]),
                             plot_training_curves({"a": history, "b": history})]):
        for ext in ("png", "svg"):
            path = tmp_path / f"fig{i}.{ext}"
            fig.savefig(path)
            assert path.stat().st_size > 1000
    axes = plot_gradient_norms(flows).axes[0]
    assert [line.get_label() for line in axes.lines] == ["plain20", "resnet20"]
    np.testing.assert_allclose(axes.lines[1].get_ydata(), flows["resnet20"].block_totals())


def test_plotting_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib
    from minires.experiments import plot_degradation
    from minires.train import plot_curves
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's choice, as a notebook's inline backend would be
    try:
        history = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_acc": 1 - 0.5 / e,
                    "test_acc": 1 - 0.6 / e} for e in (1, 2)]
        plot_training_curves({"a": history})
        plot_degradation({"plain8": history, "resnet8": history}, [8])
        plot_curves(history, str(tmp_path / "curves.png"))
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "curves.png").stat().st_size > 1000
    finally:
        matplotlib.use(before)


# ---------------------------------------------------------------- blocks found by what they do


class SmallCNN(nn.Module):
    """No residual add anywhere."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(F.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1)))


def test_a_users_own_blocks_are_found_and_named_by_their_path():
    minires.manual_seed(5)
    model = PortedNet([PortedBlock(8, 8), PortedBlock(8, 16, 2), PortedBlock(16, 16)])
    x, y = _batch()
    kept = {}

    def keep(name):  # the block input's gradient, measured here independently of gradient_flow
        return lambda module, args, out: kept.__setitem__(name, args[0].retain_grad())

    handles = [model.body[i].register_forward_hook(keep(f"body.{i}")) for i in range(3)]
    with minires.record_residuals() as records:
        flow = gradient_flow(model, x, y)
    for h in handles:
        h.remove()
    assert [b.name for b in flow.blocks] == ["body.0", "body.1", "body.2"] and flow.note == ""
    assert [b.depth for b in flow.blocks] == [0, 1, 2]
    assert [r.shortcut_module for r in records] == [None, "body.1.proj", None]
    for block, record in zip(flow.blocks, records):
        # the identity/residual split sums to the total at the block input
        assert block.total == pytest.approx(np.linalg.norm(kept[block.name].grad.numpy()), rel=1e-6)
        np.testing.assert_allclose(record.via_shortcut + record.via_residual, kept[block.name].grad.numpy(),
                                   rtol=1e-4, atol=1e-7)
        assert block.identity == pytest.approx(np.linalg.norm(record.via_shortcut), rel=1e-6) and block.identity > 0
        assert block.residual == pytest.approx(np.linalg.norm(record.via_residual), rel=1e-6) and block.residual > 0


def test_a_block_called_twice_has_a_row_per_call():
    minires.manual_seed(6)
    shared = PortedBlock(8, 8)
    model = PortedNet([shared, shared])
    with minires.record_residuals() as records:
        flow = gradient_flow(model, *_batch())
    assert [b.name for b in flow.blocks] == ["body.0", "body.0"]
    for block, record in zip(flow.blocks, records):   # each call's total is measured at that call's input
        assert block.total == pytest.approx(np.linalg.norm(record.via_shortcut + record.via_residual), rel=1e-4)
    assert flow.blocks[0].total != pytest.approx(flow.blocks[1].total, rel=1e-3)


def test_a_model_without_residual_add_gets_a_note_not_an_empty_success():
    minires.manual_seed(7)
    with pytest.warns(UserWarning, match="no module of SmallCNN ends in F.residual_add: no blocks to measure"):
        flow = gradient_flow(SmallCNN(), *_batch())
    assert flow.blocks == [] and flow.note.startswith("no module of SmallCNN ends in F.residual_add")
    assert [r.name for r in flow.layers] == ["conv", "fc"] and all(r.grad_norm > 0 for r in flow.layers)
    resnet = gradient_flow(models.resnet8(), *_batch())
    with pytest.raises(ValueError, match="'cnn': no module of SmallCNN ends in F.residual_add"):
        plot_gradient_norms({"resnet8": resnet, "cnn": flow})
    with pytest.raises(ValueError, match="plot_block_contributions.*no module of SmallCNN"):
        plot_block_contributions(flow)


def test_residual_adds_that_end_no_modules_forward_are_told_apart():
    class Inline(nn.Module):
        """Two residual adds written inline in one forward, which returns something else."""

        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Linear(3, 10)

        def forward(self, x):
            x = F.residual_add(self.c1(x), x, name="first")
            x = F.residual_add(self.c2(x), x)
            return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1)))

    with pytest.warns(UserWarning, match="calls F.residual_add 2 times, but no module's forward returns"):
        flow = gradient_flow(Inline(), *_batch())
    assert flow.blocks == []
