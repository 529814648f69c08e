"""Reading a model for its diagram: layers in the paper's words, and one forward pass that finds its blocks.

The pass records the residual adds (``record_residuals``) and, in the autograd
graph it builds, the concatenations: a module whose forward ends in ``F.concat``
and, for each tensor it joins, the modules whose outputs went in.
"""
from .. import nn
from ..autograd import enable_grad
from ..checks import pair
from ..functional import ConcatFunction
from ..models.blocks import PadChannels
from ..residual import record_residuals
from ..tensor import Tensor
from .summary import _check_input_shape, _example_input

_ACTIVATIONS = {"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "SiLU", "ELU", "Softmax", "LogSoftmax",
                "Activation"}              # minires.models.blocks wraps a plain function as an Activation
PROBE_SIZE = 32                    # side of the probe image when no input_shape is given (CIFAR's)


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
        return _pad_label(m)
    if isinstance(m, (nn.Identity, nn.Flatten)):
        return None
    return type(m).__name__


def _pad_label(m):
    """An option-A shortcut: "zero-pad to 32 /2" in its default form (subsample, zeros appended), else
    saying how it pools and where the zeros go: "avg-pool /2, zero-pad centred to 32"."""
    pad = f"zero-pad{' centred' if m.channels == 'centre' else ''} to {m.out_channels}"
    stride = _stride(m.stride)
    return f"avg-pool{stride}, {pad}" if m.pool == "avg" and stride else pad + stride


def _leaves(name, module):
    """(qualified name, leaf module) under ``module`` in definition order."""
    kids = list(module.named_children())
    if not kids:
        yield name, module
        return
    for n, m in kids:
        yield from _leaves(f"{name}.{n}" if name else n, m)


def _weight_layers(leaves, opts):
    """The layers a box lists: its convolutions (and activations, with show_layer_activations), or every
    layer with expand_nested or where there is no convolution."""
    every = [(m, d) for m, d in ((m, _describe(n, m)) for n, m in leaves) if d]
    if opts["expand_nested"]:
        return [d for _, d in every]
    shown = [d for m, d in every if isinstance(m, nn.Conv2d)
             or (opts["show_layer_activations"] and type(m).__name__ in _ACTIVATIONS)]
    return shown if any(isinstance(m, nn.Conv2d) for m, _ in every) else [d for _, d in every]


def _block_layers(name, block, shortcut, opts):
    """The layers of a block's residual branch (its convolutions, as the paper's figures show).

    ``shortcut`` is the path of the block's shortcut module, whose layers are left out (None: none).
    """
    leaves = [(n, m) for n, m in _leaves(name, block)
              if shortcut is None or not (n == shortcut or n.startswith(shortcut + "."))]
    return _weight_layers(leaves, opts)


def _shortcut(record, modules):
    """(style, label) of a block's shortcut, from its record: the identity solid, anything else dashed."""
    if record.identity:
        return "solid", "identity"
    module = modules.get(record.shortcut_module)
    if module is None:                 # computed by functional calls in the block's own forward
        return "dashed", "shortcut"
    parts = [d for d in (_describe(n, m, tag=False) for n, m in _leaves(record.shortcut_module, module)) if d]
    return "dashed", ", ".join(parts) or type(module).__name__


def _trainable(modules):
    """"yes", "no" or "partly": whether the parameters under ``modules`` train (None when there are none)."""
    flags = {id(p): p.requires_grad for m in modules for p in m.parameters()}
    if not flags:
        return None
    return "yes" if all(flags.values()) else "no" if not any(flags.values()) else "partly"


def _units(model, blocks, dense):
    """The model as a sequence: ("block", name, module) per residual block, ("dense", ...) per module that
    ends in a concatenation, ("leaf", ...) otherwise."""
    seen, root = set(), type(model).__name__

    def walk(name, module):
        if id(module) in seen:
            return
        seen.add(id(module))
        for kind, found in (("block", blocks), ("dense", dense)):
            if (name or root) in found:
                yield kind, name, module
                return
        kids = list(module.named_children())
        if not kids:
            yield "leaf", name, module
            return
        for n, m in kids:
            yield from walk(f"{name}.{n}" if name else n, m)

    return list(walk("", model))


# ------------------------------------------------------------------ the forward pass

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
    """One forward pass on zeros (eval mode, the modes restored after), recording the residual adds and, in
    the autograd graph it builds, the concatenations.

    Returns the records, {id(module): (call index, inputs, output) of its first call} and the input.
    Without ``input_shape`` the model is probed (``_probe_shape``); a probe that fails says so.
    """
    shape = _probe_shape(model) if input_shape is None else _check_input_shape(input_shape)
    named = list(model.named_modules())
    calls = {}

    def hook(module, inputs, output):
        if id(module) not in calls:
            calls[id(module)] = (len(calls), inputs, output)

    modes = [(m, m.training) for _, m in named]
    handles = [m.register_forward_hook(hook) for _, m in named]
    x = _example_input(model, shape).requires_grad_(True)
    try:
        model.eval()
        with enable_grad(), record_residuals(model) as records:   # the graph tells what each concat joins
            model(x)
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
    return records, calls, x


def _concat_blocks(model, calls):
    """{path: module} of the modules whose forward ends in F.concat: the innermost one returning the result."""
    owner = {}
    for name, m in model.named_modules():
        if id(m) in calls:
            index, _, out = calls[id(m)]
            if isinstance(out, Tensor) and isinstance(out.grad_fn, ConcatFunction):
                if id(out) not in owner or index < owner[id(out)][0]:
                    owner[id(out)] = (index, name or type(model).__name__, m)
    return {name: m for _, name, m in sorted(owner.values(), key=lambda v: v[0])}


def _sources(t, known, fallback):
    """(node ids whose outputs tensor ``t`` holds, whether ``t`` is a concatenation of them).

    A known tensor is one node's output; a concatenation is the union of its parts' sources; anything else
    computed inside the block (a functional ReLU, say) comes from the nearest known tensors upstream.
    """
    if id(t) in known:
        return [known[id(t)]], False
    fn = getattr(t, "grad_fn", None)
    found = []
    if isinstance(fn, ConcatFunction) and fn.inputs:
        for part in fn.inputs:
            found += [s for s in _sources(part, known, fallback)[0] if s not in found]
        return found, True
    stack, visited = [fn] if fn is not None else [], set()
    while stack:
        f = stack.pop()
        if id(f) in visited:
            continue
        visited.add(id(f))
        for part in f.inputs or ():
            if part is None:
                continue
            if id(part) in known:
                found += [known[id(part)]] if known[id(part)] not in found else []
            elif part.grad_fn is not None:
                stack.append(part.grad_fn)
    return found or [fallback], False
