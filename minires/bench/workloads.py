"""The workloads ``minires bench`` times: their names, sizes, groups and FLOP counts.

A workload is data: what one timed step computes and how big it is. What each
framework runs for it lives in ``cases``; how it is timed, in ``worker``.
"""
import io
from dataclasses import dataclass

# the resnet20 convolution shapes: (in channels, out channels, input side, stride), all 3x3 with padding 1
CONV_SHAPES = ((3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1))
QUICK_REPEAT, QUICK_WARMUP = 2, 1


@dataclass(frozen=True)
class Workload:
    """One timed step: what it runs, its default batch (and ``--quick`` batch), warm-ups and repeats."""

    name: str
    kind: str           # "conv_fwd", "conv_bwd", "train" or "eval"
    batch: int
    quick_batch: int
    warmup: int
    repeat: int
    model: str = ""     # for train and eval
    image: int = 32     # for train and eval: the input side
    shape: tuple = ()   # for conv: (in channels, out channels, input side, stride)

    def flop(self, batch, macs_per_image):
        """FLOPs of one step: 2 per multiply-add; a backward costs two forwards (input and weight gradients)."""
        passes = {"conv_fwd": 1, "eval": 1, "conv_bwd": 2, "train": 3}[self.kind]
        return 2 * passes * macs_per_image * batch


def _conv_workloads():
    """Forward and backward of each resnet20 convolution shape, named e.g. conv_bwd_16to32_32px_s2."""
    out = []
    for kind in ("conv_fwd", "conv_bwd"):
        for cin, cout, side, stride in CONV_SHAPES:
            name = f"{kind}_{cin}to{cout}_{side}px" + (f"_s{stride}" if stride > 1 else "")
            out.append(Workload(name, kind, 128, 8, 2, 10, shape=(cin, cout, side, stride)))
    return out


WORKLOADS = {w.name: w for w in _conv_workloads() + [
    Workload("resnet20_train", "train", 128, 8, 1, 5, model="resnet20", image=32),
    Workload("resnet20_eval", "eval", 128, 8, 1, 5, model="resnet20", image=32),
    Workload("resnet50_train", "train", 16, 2, 1, 3, model="resnet50", image=224),
]}
# resnet50_train takes minutes per framework on two cores, so it runs only when asked for
DEFAULT_WORKLOADS = [name for name in WORKLOADS if name != "resnet50_train"]
GROUPS = {
    "conv": [n for n, w in WORKLOADS.items() if w.kind.startswith("conv")],
    "conv_fwd": [n for n, w in WORKLOADS.items() if w.kind == "conv_fwd"],
    "conv_bwd": [n for n, w in WORKLOADS.items() if w.kind == "conv_bwd"],
    "default": DEFAULT_WORKLOADS,
    "all": list(WORKLOADS),
}


def resolve_workloads(names):
    """The workloads named by a comma list (or list) of names and groups (conv, conv_fwd, conv_bwd, default, all)."""
    if names is None:
        names = DEFAULT_WORKLOADS
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    chosen = []
    for name in names:
        if name not in WORKLOADS and name not in GROUPS:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)} "
                             f"or a group: {', '.join(GROUPS)}")
        chosen += [n for n in GROUPS.get(name, [name]) if n not in chosen]
    if not chosen:
        raise ValueError("no workload given")
    return [WORKLOADS[n] for n in chosen]


def macs_per_image(workload):
    """Multiply-adds of one image's forward pass: the conv formula, or ``minires.viz.summary`` over the model."""
    if workload.kind.startswith("conv"):
        cin, cout, side, stride = workload.shape
        out = (side + 2 - 3) // stride + 1
        return cout * out * out * cin * 9
    from .. import models
    from ..viz import summary
    model = models.get(workload.model)
    return summary(model, (1, 3, workload.image, workload.image), file=io.StringIO()).total_macs
