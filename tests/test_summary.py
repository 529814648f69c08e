"""minires.viz.summary: multiply-adds against the ResNet paper and torchvision, parameters, the table, the CLI.

The expected numbers come from published figures (He et al. 2015, Table 1;
torchvision's model cards) and from formulas written here from the
architecture's description, never from the code under test.
"""
import io
import time

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import models, nn
from minires.cli import main
from minires.viz import format_count, summary
from ported_blocks import PortedBlock

# ---------------------------------------------------------------- independent counts


def _conv(h, cin, cout, k, stride, pad):
    """(output side, multiply-adds per image) of a square convolution on an h x h input."""
    out = (h + 2 * pad - k) // stride + 1
    return out, out * out * cout * cin * k * k


def imagenet_macs(bottleneck, layers, stride_on_1x1=False, classes=1000, size=224):
    """Multiply-adds per image of a Table-1 ResNet: 7x7/2 conv, 3x3/2 max pool, four stages, fc.

    Projection shortcuts (option B) where the shape changes; in a bottleneck the stage's stride
    sits on the 3x3 (torchvision) or on the first 1x1 (the paper).
    """
    h, total = _conv(size, 3, 64, 7, 2, 3)
    h = (h + 2 - 3) // 2 + 1                                   # max pool 3x3, stride 2, pad 1
    in_planes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
                h1, m1 = _conv(h, in_planes, planes, 1, s1, 0)
                h2, m2 = _conv(h1, planes, planes, 3, s3, 1)
                h_out, m3 = _conv(h2, planes, 4 * planes, 1, 1, 0)
                out_planes, macs = 4 * planes, m1 + m2 + m3
            else:
                h1, m1 = _conv(h, in_planes, planes, 3, stride, 1)
                h_out, m2 = _conv(h1, planes, planes, 3, 1, 1)
                out_planes, macs = planes, m1 + m2
            if stride != 1 or in_planes != out_planes:
                macs += _conv(h, in_planes, out_planes, 1, stride, 0)[1]
            total += macs
            in_planes, h = out_planes, h_out
    return total + in_planes * classes


def cifar_macs(n, classes=10):
    """Multiply-adds per 32x32 image of ResNet-(6n+2): 3x3 conv 16, 3 stages of 2n 3x3 convs, fc."""
    total = 32 * 32 * 16 * 3 * 9
    in_planes, side = 16, 32
    for stage, planes in enumerate((16, 32, 64)):
        side = side // 2 if stage > 0 else side
        total += side * side * planes * in_planes * 9          # the first conv of the stage
        total += (2 * n - 1) * side * side * planes * planes * 9
        in_planes = planes
    return total + 64 * classes                                 # option A shortcuts cost nothing


IMAGENET = {"resnet18": (False, [2, 2, 2, 2]), "resnet34": (False, [3, 4, 6, 3]),
            "resnet50": (True, [3, 4, 6, 3]), "resnet101": (True, [3, 4, 23, 3]),
            "resnet152": (True, [3, 8, 36, 3])}
# torchvision's published GFLOPS (multiply-adds, x1e9) for the default layout (stride on the 3x3)
TORCHVISION_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80, "resnet152": 11.51}
# He et al. 2015, Table 1: "FLOPs" 1.8, 3.6, 3.8, 7.6, 11.3 x10^9 (stride on the first 1x1)
PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}
# torchvision's parameter counts for 1000 classes
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}


@pytest.fixture(scope="module")
def imagenet_summaries():
    """One 224x224 summary per model and layout (the forward passes are the slow part: do them once)."""
    results, seconds, params = {}, {}, {}
    for name in IMAGENET:
        for paper in (False, True):
            if paper and not IMAGENET[name][0]:
                continue                                        # resnet18/34 have no bottleneck
            model = models.get(name, stride_on_1x1=True) if paper else models.get(name)
            start = time.perf_counter()
            results[name, paper] = summary(model, (1, 3, 224, 224), file=io.StringIO())
            seconds[name, paper] = time.perf_counter() - start
            params[name, paper] = model.num_parameters()
    return results, seconds, params


# ---------------------------------------------------------------- multiply-adds


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_torchvision_multiply_adds(imagenet_summaries, name):
    result = imagenet_summaries[0][name, False]
    assert round(result.total_macs / 1e9, 2) == TORCHVISION_GMACS[name]
    assert result.total_macs == imagenet_macs(*IMAGENET[name])


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_paper_table1_multiply_adds(imagenet_summaries, name):
    """The paper's layout gives Table 1's figures.

    Table 1 prints one decimal but does not round consistently (3.66e9 is printed 3.6, 3.86e9 is 3.8,
    7.57e9 is 7.6), so each figure is matched to within its last digit; the exact count comes from
    the formula. The torchvision layout is 0.2e9 or more away from the paper's 50/101/152 figures.
    """
    paper = IMAGENET[name][0]
    result = imagenet_summaries[0][name, paper]
    assert abs(result.total_macs / 1e9 - PAPER_GMACS[name]) < 0.07
    assert result.total_macs == imagenet_macs(*IMAGENET[name], stride_on_1x1=paper)
    if paper:
        default = imagenet_summaries[0][name, False]
        assert abs(default.total_macs / 1e9 - PAPER_GMACS[name]) > 0.2


def test_resnet152_is_fast(imagenet_summaries):
    assert imagenet_summaries[1]["resnet152", False] < 30.0   # about 3 s on two CPU cores


@pytest.mark.parametrize("name, n", [("resnet20", 3), ("resnet56", 9), ("plain20", 3)])
def test_cifar_multiply_adds(name, n):
    result = summary(models.get(name), (1, 3, 32, 32), file=io.StringIO())
    assert result.total_macs == cifar_macs(n)
    if name == "resnet20":
        assert round(result.total_macs / 1e6) in (40, 41, 42)  # "about 41 million" per image


def test_macs_are_per_image():
    one = summary(models.resnet20(), (1, 3, 32, 32), file=io.StringIO())
    three = summary(models.resnet20(), (3, 3, 32, 32), file=io.StringIO())
    assert three.total_macs == one.total_macs
    assert three.row("layer1.0.conv1").output_shape == (3, 16, 32, 32)


def test_rows_count_conv_and_linear_layers():
    model = models.resnet20()
    result = summary(model, (1, 3, 32, 32), depth=None, file=io.StringIO())
    assert result.row("conv1").macs == 32 * 32 * 16 * 3 * 9
    assert result.row("layer2.0.conv1").macs == 16 * 16 * 32 * 16 * 9   # stride 2: 16x16 outputs
    assert result.row("layer2.0.conv1").output_shape == (1, 32, 16, 16)
    assert result.row("fc").macs == 64 * 10
    assert result.row("bn1").macs == 0 and result.row("avgpool").macs == 0
    assert result.row("layer2.0.downsample").macs == 0                # option A: no multiply-adds
    assert result.row("layer2").macs == sum(result.row(f"layer2.{i}").macs for i in range(3))
    # every conv is counted once: the leaves add up to the total
    leaves = [r for r in result.all_rows if r.type in ("Conv2d", "Linear")]
    assert len(leaves) == 20 and sum(r.macs for r in leaves) == result.total_macs


class _Twice(nn.Module):
    """A Linear used twice and a strided, padded convolution: the counting rule on small numbers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 5 * 5, 4)
        self.shared = nn.Linear(4, 4)

    def forward(self, x):
        x = minires.functional.flatten(self.conv(x))
        return self.shared(self.shared(self.fc(x)))


def test_counting_rule_on_a_small_model():
    result = summary(_Twice(), (2, 3, 9, 9), file=io.StringIO())
    conv = 8 * 5 * 5 * (3 * 3 * 3)          # 9x9, stride 2, pad 1 -> 5x5 outputs
    fc = 4 * 200
    shared = 2 * (4 * 4)                    # called twice
    assert result.row("conv").macs == conv and result.row("conv").output_shape == (2, 8, 5, 5)
    assert result.row("shared").macs == shared and result.row("shared").calls == 2
    assert result.total_macs == conv + fc + shared
    assert result.total_params == (8 * 27 + 8) + (200 * 4 + 4) + (16 + 4)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_parameter_totals(imagenet_summaries, name):
    result = imagenet_summaries[0][name, False]
    assert result.total_params == imagenet_summaries[2][name, False] == TORCHVISION_PARAMS[name]
    assert result.trainable_params == result.total_params
    assert sum(r.params for r in result.all_rows if r.depth == 1) == result.total_params


def imagenet_counts(bottleneck, layers, classes=1000):
    """(weights, conv output channels, batch-norm channels) of a Table-1 ResNet, counted from the architecture.

    Weights: every conv's kernel (no bias, as torchvision), batch norm's gamma and beta, the fc's weight and
    bias. Every conv is followed by one batch norm, so both channel counts come out equal.
    """
    channels = [64]                                            # the 7x7 stem conv
    weights = 3 * 64 * 49
    in_planes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        for b in range(blocks):
            if bottleneck:
                convs = [(in_planes, planes, 1), (planes, planes, 3), (planes, 4 * planes, 1)]
            else:
                convs = [(in_planes, planes, 3), (planes, planes, 3)]
            out_planes = convs[-1][1]
            if (stage > 0 and b == 0) or in_planes != out_planes:
                convs.append((in_planes, out_planes, 1))       # the projection shortcut (option B)
            weights += sum(cin * cout * k * k for cin, cout, k in convs)
            channels += [cout for _, cout, _ in convs]
            in_planes = out_planes
    bn = sum(channels)
    return weights + 2 * bn + in_planes * classes + classes, sum(channels), bn


# keras.applications.ResNet50(include_top=True).summary()
KERAS_RESNET50 = {"total": 25_636_712, "trainable": 25_583_592, "non_trainable": 53_120}


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_hand_counts_agree_with_torchvision_and_the_summary(imagenet_summaries, name):
    weights, _, bn = imagenet_counts(*IMAGENET[name])
    assert weights == TORCHVISION_PARAMS[name]
    result = imagenet_summaries[0][name, False]
    assert result.trainable_params == weights and result.frozen_params == 0
    assert result.buffer_values == result.non_trainable_params == 2 * bn   # running_mean and running_var
    assert result.keras_total_params == weights + 2 * bn
    assert result.counter_values == sum(isinstance(m, nn.BatchNorm2d) for m in models.get(name).modules())


def test_resnet50_against_keras():
    """Keras's ResNet50 is torchvision's plus a bias on each of its 53 convolutions (one per output channel)."""
    weights, conv_channels, bn = imagenet_counts(True, [3, 4, 6, 3])
    assert (weights, conv_channels, bn) == (25_557_032, 26_560, 26_560)
    assert weights + conv_channels == KERAS_RESNET50["trainable"]
    assert 2 * bn == KERAS_RESNET50["non_trainable"]
    assert weights + conv_channels + 2 * bn == KERAS_RESNET50["total"]

    model = models.resnet50()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53 and all(c.bias is None for c in convs)
    ours = summary(model, (1, 3, 32, 32), file=io.StringIO())     # the counts do not depend on the image size
    lines = ours.text.splitlines()
    assert "Total params:         25,610,152  (parameters and buffers, as Keras counts)" in lines
    assert "Trainable params:     25,557,032" in lines
    assert "Non-trainable params: 53,120      (frozen parameters 0, buffers 53,120)" in lines
    assert "Counters:             53          (integer buffers such as num_batches_tracked, in neither)" in lines

    for c in convs:                                            # Keras's architecture: a bias on every conv
        c.bias = nn.Parameter(np.zeros(c.out_channels, dtype=np.float32))
    keras = summary(model, (1, 3, 32, 32), file=io.StringIO())
    assert (keras.keras_total_params, keras.trainable_params, keras.non_trainable_params) == \
        (KERAS_RESNET50["total"], KERAS_RESNET50["trainable"], KERAS_RESNET50["non_trainable"])
    for label, key in (("Total params:", "total"), ("Trainable params:", "trainable"),
                       ("Non-trainable params:", "non_trainable")):
        assert any(line.startswith(f"{label:<22}{KERAS_RESNET50[key]:,}") for line in keras.text.splitlines())


def test_trainable_parameters():
    model = models.resnet20()
    model.conv1.weight.requires_grad = False
    result = summary(model, (1, 3, 32, 32), file=io.StringIO())
    bn_channels = 16 + 2 * 3 * (16 + 32 + 64)                   # the stem's, then two per block
    assert result.total_params == model.num_parameters() == 269_722
    assert result.trainable_params == 269_722 - 16 * 3 * 9
    assert result.frozen_params == 432 and result.buffer_values == 2 * bn_channels
    assert result.non_trainable_params == 432 + 2 * bn_channels
    assert result.keras_total_params == 269_722 + 2 * bn_channels and result.counter_values == 1 + 18
    assert f"Non-trainable params: {432 + 2 * bn_channels:,}" in result.text
    assert f"(frozen parameters 432, buffers {2 * bn_channels:,})" in result.text


def test_rows_split_parameters_and_buffers():
    model = models.resnet20()
    model.conv1.weight.requires_grad = False
    model.bn1.weight.requires_grad = False
    result = summary(model, (1, 3, 32, 32), depth=None, file=io.StringIO())
    conv1, bn1, fc = result.row("conv1"), result.row("bn1"), result.row("fc")
    assert (conv1.trainable, conv1.non_trainable, conv1.buffers, conv1.counters) == (0, 432, 0, 0)
    assert (bn1.trainable, bn1.non_trainable, bn1.buffers, bn1.counters) == (16, 16, 32, 1)
    assert (fc.trainable, fc.non_trainable, fc.buffers) == (650, 0, 0) and fc.params == 650
    block = result.row("layer2.0")                             # two 3x3 convs, two batch norms of 32
    assert (block.trainable, block.buffers, block.counters) == (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32, 4 * 32, 2)
    for r in result.all_rows:
        assert r.params == r.trainable + r.non_trainable
    top = [r for r in result.all_rows if r.depth == 1]
    assert sum(r.buffers for r in top) == result.buffer_values
    assert sum(r.non_trainable for r in top) == result.frozen_params == 432 + 16
    header = result.text.splitlines()[2].split()
    assert header == ["Layer", "Type", "Output", "shape", "Trainable", "Non-trainable", "Buffers", "Mult-adds"]
    bn_line = next(line for line in result.text.splitlines() if line.split()[:1] == ["bn1"])
    assert bn_line.split()[-4:] == ["16", "16", "32", "--"]


# ---------------------------------------------------------------- the table


def test_table_rows_follow_depth():
    model = models.resnet20()
    d1 = summary(model, (1, 3, 32, 32), depth=1, file=io.StringIO())
    d2 = summary(model, (1, 3, 32, 32), file=io.StringIO())
    d3 = summary(model, (1, 3, 32, 32), depth=3, file=io.StringIO())
    names = lambda r: [row.name for row in r.rows]                        # noqa: E731
    assert names(d1) == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert "layer1.0" in names(d2) and "layer1.0.conv1" not in names(d2)
    assert "layer1.0.conv1" in d3.text and "layer2.0.downsample" in d3.text and "PadChannels" in d3.text
    assert "layer1.0.conv1" not in d2.text and "layer1.0" in d2.text
    assert d1.total_macs == d2.total_macs == d3.total_macs
    assert d1.total_params == d3.total_params


def test_table_text(imagenet_summaries):
    text = imagenet_summaries[0]["resnet50", False].text
    for name in ("conv1", "layer1.0", "layer4.2", "avgpool", "fc", "Bottleneck", "[1, 2048, 7, 7]",
                 "[1, 1000]"):
        assert name in text
    assert "25,557,032" in text
    assert "4.09 G (4,089,184,256)" in text


def test_prints_to_file_or_stdout(capsys):
    buffer = io.StringIO()
    result = summary(models.resnet20(), (1, 3, 32, 32), file=buffer)
    assert capsys.readouterr().out == ""
    assert buffer.getvalue().strip() == result.text.strip() == str(result).strip()
    summary(models.resnet20(), (1, 3, 32, 32))
    assert "Total multiply-adds:  40.55 M (40,551,040) per image" in capsys.readouterr().out
    assert "total_macs=40,551,040" in repr(result)


@pytest.mark.parametrize("n, text", [(4_089_184_256, "4.09 G"), (40_551_040, "40.55 M"), (2_048, "2.05 K"),
                                     (640, "640"), (0, "0"), (11_513_626_624, "11.51 G")])
def test_format_count(n, text):
    assert format_count(n) == text


# ---------------------------------------------------------------- state is left as it was


def test_training_mode_and_state_restored():
    model = models.resnet20()
    model.train()
    model.layer2.eval()                    # a mixed state must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    stats = model.bn1.running_mean.data.copy()
    summary(model, (2, 3, 32, 32), file=io.StringIO())
    assert {name: m.training for name, m in model.named_modules()} == before
    assert int(model.bn1.num_batches_tracked.data) == 0       # ran in eval mode: no statistics updated
    np.testing.assert_array_equal(model.bn1.running_mean.data, stats)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_eval_model_stays_in_eval():
    model = models.resnet20().eval()
    summary(model, (1, 3, 32, 32), file=io.StringIO())
    assert not any(m.training for m in model.modules())


# ---------------------------------------------------------------- bad input


def test_wrong_input_shape_names_the_layer_and_restores_state():
    model = models.resnet20().train()
    with pytest.raises(ValueError, match=r"conv1.*3 input channels"):
        summary(model, (1, 1, 32, 32), file=io.StringIO())
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("shape", [(1, 3, 0, 32), (3, -1), "1x3x32x32", (), 7, (1.0, 3, 32, 32)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape"):
        summary(models.resnet20(), shape, file=io.StringIO())


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        summary(models.resnet20(), (1, 3, 32, 32), depth=-1, file=io.StringIO())
    with pytest.raises(TypeError, match="Module"):
        summary("resnet20", (1, 3, 32, 32))


# ---------------------------------------------------------------- residual blocks, found by what they do


class _PortedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(PortedBlock(3, 4, 2), PortedBlock(4, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.flatten(F.adaptive_avg_pool2d(self.stages(x), 1)))


def _type_cell(result, name):
    """The Type column of the printed row ``name``."""
    line = next(line for line in result.text.splitlines() if line.split()[:1] == [name])
    return line.split(None, 1)[1].split("  ")[0].strip()


def test_block_rows_are_marked_and_listed():
    result = summary(models.resnet20(), (1, 3, 32, 32), file=io.StringIO())
    blocks = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert result.blocks == blocks and result.note == ""
    assert [r.name for r in result.all_rows if r.block] == blocks and result.row("layer1.0").type == "BasicBlock"
    assert _type_cell(result, "layer1.0") == "BasicBlock +" and _type_cell(result, "layer1") == "Sequential"
    assert result.text.splitlines()[-1] == "Residual blocks (+):  9: layer1.0, layer1.1 ... layer3.2"
    plain = summary(models.plain20(), (1, 3, 32, 32), file=io.StringIO())
    assert plain.blocks == blocks and _type_cell(plain, "layer3.2") == "BasicBlock +"
    assert plain.text.splitlines()[-1] == \
        "Residual blocks (+):  9, all plain (no shortcut): layer1.0, layer1.1 ... layer3.2"


def test_marks_change_only_the_type_column_and_add_one_line():
    result = summary(models.resnet20(), (1, 3, 32, 32), file=io.StringIO())
    lines = result.text.splitlines()
    rows = [line for line in lines if line.startswith(("  layer", "layer", "conv1", "fc"))]
    assert sum(" +  " in line for line in rows) == 9
    assert lines[-2] == "Total multiply-adds:  40.55 M (40,551,040) per image"


def test_a_users_own_block_is_marked():
    result = summary(_PortedNet(), (1, 3, 8, 8), depth=None, file=io.StringIO())
    assert result.blocks == ["stages.0", "stages.1"]
    assert _type_cell(result, "stages.0") == "PortedBlock +" and _type_cell(result, "stages.0.proj") == "Sequential"
    assert result.text.splitlines()[-1] == "Residual blocks (+):  2: stages.0, stages.1"
    convs_and_bns = (3 * 4 * 9 + 2 * 4 + 4 * 4 * 9 + 2 * 4 + 3 * 4 + 2 * 4) + (4 * 4 * 9 + 2 * 4) * 2
    assert result.total_params == convs_and_bns + 4 * 2 + 2


def test_a_model_without_residual_add_says_so():
    result = summary(_Twice(), (2, 3, 9, 9), file=io.StringIO())
    assert result.blocks == [] and not any(r.block for r in result.all_rows)
    assert result.note == "no module of _Twice ends in F.residual_add"
    assert result.text.splitlines()[-1] == "Residual blocks:      none: no module of _Twice ends in F.residual_add"
    assert " +" not in result.text


# ---------------------------------------------------------------- the command line


def test_cli_summary(capsys):
    assert main(["summary", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "layer2.0" in out and "BasicBlock" in out and "layer2.0.conv1" not in out
    assert "269,722" in out and "40.55 M (40,551,040)" in out
    assert main(["summary", "resnet20", "--depth", "3", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "layer2.0.conv1" in out and "[1, 100]" in out


def test_cli_summary_unknown_model(capsys):
    assert main(["summary", "resnet7"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet7'" in err and "resnet20" in err


def test_cli_summary_uses_the_sizes_it_is_given(capsys):
    assert main(["summary", "resnet20", "--in-channels", "1", "--input-size", "8", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "[1, 1, 8, 8]" in out and "[1, 7]" in out


@pytest.mark.parametrize("flag, value", [("--input-size", "0"), ("--in-channels", "0"), ("--num-classes", "0"),
                                         ("--input-size", "-8"), ("--depth", "-1")])
def test_cli_summary_refuses_sizes_below_one_instead_of_the_defaults(capsys, flag, value):
    assert main(["summary", "resnet20", flag, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and flag in captured.err and len(captured.err.strip().splitlines()) == 1
