"""Oracles and checks shared by the exercise tests.

Every expected value here is computed independently of the code under test:
by direct loops over indices, by finite differences in float64 of a
loss projected on a fixed random tensor, or by PyTorch where it is installed.
The checks fail with a message a student can act on: which call, which
shape, which element (decoded: channel and tap of a column row, image and
pixel of an image), expected against got.

The loop oracles are correct but slow on purpose, so they are no answer to
the exercises that must be vectorised: ``count_lines`` counts the Python
lines a call runs, and ``check_lines_do_not_grow`` fails a function whose
count grows with the number of images, pixels or channels.
"""
import dataclasses
import gc
import itertools
import os
import sys

import numpy as np
import pytest


# ---------------------------------------------------------------- checks

def _fmt(v):
    return f"{v:.6g}" if np.isscalar(v) or np.ndim(v) == 0 else repr(v)


def check_array(got, want, what, rtol=1e-5, atol=1e-6, dtype=None):
    """Fail unless ``got`` is an array of ``want``'s shape (and ``dtype``) with close values."""
    got, want = _as_array(got, want, what, dtype)
    bad = _bad_mask(got, want, rtol, atol)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.size} elements are wrong; the first at index {first}: "
                    f"expected {_fmt(want[first])}, got {_fmt(got[first])} "
                    f"(largest error {_largest_error(got, want):.3g})", pytrace=False)


def check_unchanged(array, copy, what):
    """Fail if ``array`` was modified (it must equal ``copy``, taken before the call)."""
    if not np.array_equal(array, copy):
        first = tuple(int(i) for i in np.argwhere(array != copy)[0])
        pytest.fail(f"{what} was changed in place: at index {first} it held {_fmt(copy[first])} and now holds "
                    f"{_fmt(array[first])}", pytrace=False)


def _bad_mask(got, want, rtol, atol):
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    bad = ~np.isclose(g64, w64, rtol=rtol, atol=atol)
    return bad | (np.isnan(g64) != np.isnan(w64))


def _largest_error(got, want):
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    return np.nanmax(np.abs(g64 - w64)) if np.isfinite(g64).all() else float("nan")


def _as_array(got, want, what, dtype, hint=""):
    """``got`` as an array of ``want``'s shape (and dtype), or a failure that says what came instead."""
    if got is None:
        pytest.fail(f"{what}: got None, expected an array of shape {np.shape(want)}", pytrace=False)
    if not hasattr(got, "shape"):
        pytest.fail(f"{what}: got a {type(got).__name__}, expected an array of shape {np.shape(want)}",
                    pytrace=False)
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        transposed = " (transposed?)" if got.ndim == 2 and got.shape == want.shape[::-1] else ""
        pytest.fail(f"{what}: got shape {got.shape}, expected {want.shape}{transposed}{hint}", pytrace=False)
    if dtype is not None and got.dtype != dtype:
        pytest.fail(f"{what}: got dtype {got.dtype}, expected {np.dtype(dtype)} (keep the input's dtype)",
                    pytrace=False)
    return got, want


def check_cols(got, want, what, x_shape, kernel, stride, padding, rtol=1e-5, atol=1e-6, dtype=None):
    """check_array for a columns matrix (C*kh*kw, N*OH*OW): a wrong element is named by channel and tap
    (its row) and by image and output position (its column); a row or column that holds another one's
    values is called out (tap order? column order?)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    got, want = _as_array(got, want, what, dtype,
                          hint=f": rows (channel, tap i, tap j) = C*kh*kw = {c}*{kh}*{kw}, columns "
                               f"(image, out y, out x) = N*OH*OW = {n}*{oh}*{ow}")
    bad = _bad_mask(got, want, rtol, atol)
    if not bad.any():
        return

    def row_name(r, channel=True):
        ci, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        return f"channel {ci}, tap ({i}, {j})" if channel else f"tap ({i}, {j})"

    def col_name(k):
        b, oy, ox = k // (oh * ow), (k // ow) % oh, k % ow
        return f"image {b}, output ({oy}, {ox})"

    r, k = (int(v) for v in np.argwhere(bad)[0])
    ci, i, j = r // (kh * kw), (r // kw) % kh, r % kw
    b, oy, ox = k // (oh * ow), (k // ow) % oh, k % ow
    iy, ix = oy * sh + i - ph, ox * sw + j - pw
    source = f"x[{b}, {ci}, {iy}, {ix}]" if 0 <= iy < h and 0 <= ix < w else "in the padding"
    message = (f"{what}: {int(bad.sum())} of {bad.size} elements are wrong; the first in row {r} "
               f"({row_name(r)}), column {k} ({col_name(k)}): expected {_fmt(want[r, k])} ({source}), "
               f"got {_fmt(got[r, k])} (largest error {_largest_error(got, want):.3g}).")
    moved = _moved(got, want, bad, r, axis=0, rtol=rtol, atol=atol, name=row_name,
                   same_group=lambda a, b: a // (kh * kw) == b // (kh * kw),
                   order="tap order? Row (c, i, j) is (c*kh + i)*kw + j",
                   other_order="channel order? Row (c, i, j) is (c*kh + i)*kw + j")
    if not moved:
        moved = _moved(got, want, bad, k, axis=1, rtol=rtol, atol=atol, name=col_name,
                       same_group=lambda a, b: True,
                       order="column order? Column (n, oy, ox) is (n*OH + oy)*OW + ox")
    pytest.fail(message + moved, pytrace=False)


def _moved(got, want, bad, first, axis, rtol, atol, name, same_group, order, other_order=None):
    """A sentence when wrong row (axis 0) or column (axis 1) ``first`` of ``got`` holds another one of ``want``."""
    g = got if axis == 0 else got.T
    w = want if axis == 0 else want.T
    wrong = np.flatnonzero(bad.any(axis=1 - axis))
    found = {}
    for r in [first] + [int(r) for r in wrong[:64] if r != first]:  # enough to tell a permutation from noise
        same = np.flatnonzero(np.isclose(g[r][None, :].astype(np.float64), w.astype(np.float64),
                                         rtol=rtol, atol=atol).all(axis=1))
        same = [int(s) for s in same if s != r]
        if same:  # prefer a match in the same channel: the tap order is the likelier slip
            found[int(r)] = next((s for s in same if same_group(r, s)), same[0])
    if first not in found:
        return ""
    other = found[first]
    kind = "row" if axis == 0 else "column"
    within = same_group(first, other)
    held = name(other, channel=False) if axis == 0 and within else name(other)
    every = len(found) >= min(len(wrong), 64) and len(set(found.values())) == len(found)
    text = f" The {kind} for {name(first)} holds the values of {held}"
    text += f" (so does every wrong {kind}: they are permuted)" if every and len(found) > 1 else ""
    return text + ": " + (order if within or other_order is None else other_order)


def check_image(got, want, what, names=("image", "channel", "pixel"), rtol=1e-5, atol=1e-6, dtype=None,
                overlaps=None):
    """check_array for an (N, C, H, W) result: a wrong element is named "image n, channel c, pixel (y, x)".

    ``overlaps``: a boolean (N, C, H, W) mask of the pixels several taps read (col2im's sums), to say
    so when only those are wrong.
    """
    got, want = _as_array(got, want, what, dtype)
    bad = _bad_mask(got, want, rtol, atol)
    if not bad.any():
        return
    b, ch, y, x = (int(v) for v in np.argwhere(bad)[0])
    message = (f"{what}: {int(bad.sum())} of {bad.size} elements are wrong; the first at {names[0]} {b}, "
               f"{names[1]} {ch}, {names[2]} ({y}, {x}): expected {_fmt(want[b, ch, y, x])}, "
               f"got {_fmt(got[b, ch, y, x])} (largest error {_largest_error(got, want):.3g})")
    if overlaps is not None and overlaps.any() and not (bad & ~overlaps).any():
        message += (". Only pixels that several taps read are wrong: they must get the sum of all their "
                    "entries (+= adds; a fancy-indexed += with repeated indices does not, np.add.at does)")
    pytest.fail(message, pytrace=False)


def numerical_gradient(f, x, eps=1e-6):
    """The gradient of scalar f at float64 array x by central differences (x is restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = f()
        x[idx] = old - eps
        down = f()
        x[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


# ---------------------------------------------------------------- loop oracles

def out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def im2col_loop(x, kh, kw, stride, padding):
    """cols[(c, i, j), (n, oy, ox)] = x[n, c, oy*sh + i - ph, ox*sw + j - pw] (0 outside), one element at a time."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = np.zeros((c * kh * kw, n * oh * ow), dtype=x.dtype)
    for ci, i, j in itertools.product(range(c), range(kh), range(kw)):
        row = (ci * kh + i) * kw + j
        for b, oy, ox in itertools.product(range(n), range(oh), range(ow)):
            iy, ix = oy * sh + i - ph, ox * sw + j - pw
            if 0 <= iy < h and 0 <= ix < w:
                cols[row, (b * oh + oy) * ow + ox] = x[b, ci, iy, ix]
    return cols


def col2im_loop(cols, x_shape, kh, kw, stride, padding):
    """Every column entry added back onto the pixel it was read from (entries read from the padding dropped)."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    x = np.zeros(x_shape, dtype=np.float64)
    for ci, i, j in itertools.product(range(c), range(kh), range(kw)):
        row = (ci * kh + i) * kw + j
        for b, oy, ox in itertools.product(range(n), range(oh), range(ow)):
            iy, ix = oy * sh + i - ph, ox * sw + j - pw
            if 0 <= iy < h and 0 <= ix < w:
                x[b, ci, iy, ix] += cols[row, (b * oh + oy) * ow + ox]
    return x.astype(cols.dtype)


def conv2d_loop(x, weight, stride, padding):
    """y[n, o, oy, ox] = sum over c, i, j of weight[o, c, i, j] * padded x[n, c, oy*sh + i, ox*sw + j], in float64."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + w] = x
    y = np.zeros((n, o, oh, ow))
    w64 = weight.astype(np.float64)
    for b, oc, oy, ox in itertools.product(range(n), range(o), range(oh), range(ow)):
        y[b, oc, oy, ox] = np.sum(w64[oc] * xp[b, :, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw])
    return y


def conv2d_input_grad_loop(grad_out, weight, x_shape, stride, padding):
    """dx[n, c, iy, ix] = sum of weight[o, c, i, j] * dy[n, o, oy, ox] over every (o, oy, ox, i, j) that read it."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = grad_out.shape
    dx = np.zeros(x_shape)
    for b, oc, oy, ox, i, j in itertools.product(range(n), range(o), range(oh), range(ow), range(kh), range(kw)):
        iy, ix = oy * sh + i - ph, ox * sw + j - pw
        if 0 <= iy < h and 0 <= ix < w:
            dx[b, :, iy, ix] += weight[oc, :, i, j] * grad_out[b, oc, oy, ox]
    return dx


def conv2d_weight_grad_loop(grad_out, x, weight_shape, stride, padding):
    """dW[o, c, i, j] = sum over n, oy, ox of dy[n, o, oy, ox] * x[n, c, oy*sh + i - ph, ox*sw + j - pw]."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    o, _, kh, kw = weight_shape
    _, _, oh, ow = grad_out.shape
    dw = np.zeros(weight_shape)
    for b, oc, oy, ox, i, j in itertools.product(range(n), range(o), range(oh), range(ow), range(kh), range(kw)):
        iy, ix = oy * sh + i - ph, ox * sw + j - pw
        if 0 <= iy < h and 0 <= ix < w:
            dw[oc, :, i, j] += grad_out[b, oc, oy, ox] * x[b, :, iy, ix]
    return dw


def channel_stats_loop(x):
    """Per-channel mean and biased variance of x (N, C, H, W), by explicit sums in float64."""
    c = x.shape[1]
    mean, var = np.zeros(c), np.zeros(c)
    for ch in range(c):
        values = [float(v) for v in x[:, ch].ravel()]
        mean[ch] = sum(values) / len(values)
        var[ch] = sum((v - mean[ch]) ** 2 for v in values) / len(values)
    return mean, var


def batch_norm_loop(x, mean, invstd, weight, bias):
    """y[n, c, ...] = (x - mean[c]) * invstd[c] * weight[c] + bias[c], channel by channel in float64."""
    y = np.zeros(x.shape)
    for ch in range(x.shape[1]):
        scale = float(invstd[ch]) * (1.0 if weight is None else float(weight[ch]))
        shift = 0.0 if bias is None else float(bias[ch])
        y[:, ch] = (x[:, ch].astype(np.float64) - float(mean[ch])) * scale + shift
    return y


def batch_norm_train_loop(x, weight, bias, eps):
    """Batch norm with the batch's own statistics, in float64: the training-mode forward."""
    mean, var = channel_stats_loop(x)
    return batch_norm_loop(x, mean, 1 / np.sqrt(var + eps), weight, bias)


def unbroadcast_loop(grad, shape):
    """Sum every element of grad into the element of ``shape`` that broadcasting copied it from."""
    out = np.zeros(shape, dtype=np.float64)
    extra = grad.ndim - len(shape)
    for idx in np.ndindex(grad.shape):
        target = tuple(0 if shape[k] == 1 else idx[k + extra] for k in range(len(shape)))
        out[target] += grad[idx]
    return out


# ---------------------------------------------------------------- fake kernel backends

class LoopKernels:
    """The kernel interface, implemented by the loops above: stands in for the backend in layer tests."""

    NAME = "test-loops"

    def __init__(self):
        self.calls = []

    def conv2d_forward(self, x, weight, stride, padding):
        self.calls.append("conv2d_forward")
        return conv2d_loop(x, weight, stride, padding).astype(x.dtype)

    def conv2d_backward_input(self, grad_out, weight, x_shape, stride, padding):
        self.calls.append("conv2d_backward_input")
        return conv2d_input_grad_loop(grad_out, weight, x_shape, stride, padding).astype(grad_out.dtype)

    def conv2d_backward_weight(self, grad_out, x, weight_shape, stride, padding):
        self.calls.append("conv2d_backward_weight")
        return conv2d_weight_grad_loop(grad_out, x, weight_shape, stride, padding).astype(grad_out.dtype)

    def batch_norm_stats(self, x):
        self.calls.append("batch_norm_stats")
        mean, var = channel_stats_loop(x)
        return mean.astype(x.dtype), var.astype(x.dtype)

    def batch_norm_forward(self, x, scale, shift):
        self.calls.append("batch_norm_forward")
        return batch_norm_loop(x, np.zeros(x.shape[1]), scale, None, shift).astype(x.dtype)  # x * scale + shift

    def residual_add_forward(self, f, s, relu):
        self.calls.append("residual_add_forward")
        y = f + s
        return np.where(y > 0, y, 0).astype(f.dtype) if relu else y


def use_loop_kernels(monkeypatch):
    """Route minires.functional's ops to LoopKernels (so a layer test does not depend on other exercises)."""
    import minires.functional as F
    kernels = LoopKernels()
    monkeypatch.setattr(F, "for_array", lambda array: kernels)
    return kernels


def describe_window(kernel, stride, padding):
    return f"kernel {kernel}, stride {stride}, padding {padding}"


WINDOWS = [((3, 3), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 0)), ((1, 1), (2, 2), (0, 0))]
WINDOW_IDS = ["3x3-s1-p1", "2x2-s2", "3x2-s2x1-p1x0", "1x1-s2"]


# ---------------------------------------------------------------- vectorisation: counting Python lines

_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep
OWN_SLACK = 3          # lines a vectorised function may differ by (a branch on a size, say)
BASE_LIMIT = 2_000_000  # a small input that runs more lines than this is looping anyway


class _Stop(BaseException):
    """Ends a counted call that has run more lines than the check needs (not an Exception: an ``except
    Exception`` in the code under test does not swallow it)."""


@dataclasses.dataclass
class LineCount:
    """What ``count_lines`` saw: the input (``label``), what grew against the first input, the lines."""
    label: str
    grew: str = ""
    own: int = 0          # lines outside NumPy's own files: the code under test and whatever it calls
    numpy: int = 0        # lines of NumPy's own Python code (np.pad, np.einsum's path search, ...)
    stopped: bool = False  # counting stopped at the limit: the true count is higher
    result: object = None

    @property
    def lines(self):
        return self.own + self.numpy


def count_lines(fn, args, label, grew="", exempt=(), limit=BASE_LIMIT):
    """Call fn(*args) and count the Python 'line' events it runs: in its own frame and in every frame it calls.

    A vectorised function runs the same lines whatever the input's size; a Python loop runs its body once
    per pixel, image or channel. The functions in ``exempt`` (the tests' oracles standing in for other
    exercises) and what they call are not counted. Counting stops past ``limit`` lines.
    """
    seen = LineCount(label, grew)
    exempt_codes = {f.__code__ for f in exempt}
    paused = []  # the exempt frame being run, if any

    def own(frame, event, arg):
        if event == "line":
            seen.own += 1
            if seen.own + seen.numpy > limit:
                raise _Stop
        return own

    def in_numpy(frame, event, arg):
        if event == "line":
            seen.numpy += 1
            if seen.own + seen.numpy > limit:
                raise _Stop
        return in_numpy

    def leave(frame, event, arg):
        if event == "return" and paused and frame is paused[0]:
            paused.clear()
        return leave

    def on_call(frame, event, arg):
        if paused:
            return None
        if frame.f_code in exempt_codes:
            paused.append(frame)
            return leave
        return in_numpy if frame.f_code.co_filename.startswith(_NUMPY_DIR) else own

    previous, gc_was_on = sys.gettrace(), gc.isenabled()
    gc.disable()  # no collector-run __del__ in the middle of the count
    sys.settrace(on_call)
    try:
        seen.result = fn(*args)
    except _Stop:
        seen.stopped = True
    finally:
        sys.settrace(previous)
        if gc_was_on:
            gc.enable()
    return seen


def count_runs(fn, inputs, exempt=()):
    """``count_lines`` for each (label, args, grew) of ``inputs``, the first the small one (run once before,
    uncounted, so one-time work such as an import is not counted); later runs stop once they have shown growth."""
    label, args, grew = inputs[0]
    fn(*args)
    base = count_lines(fn, args, label, grew, exempt)
    runs = [base]
    for label, args, grew in inputs[1:]:
        runs.append(count_lines(fn, args, label, grew, exempt, limit=4 * base.lines + 2000))
    return runs


def check_lines_do_not_grow(call, runs, advice):
    """Fail when a later run of ``runs`` (from ``count_runs``) ran more Python lines than the first.

    Lines of the code under test may differ by OWN_SLACK; NumPy's own Python code (np.einsum's path
    search varies with the sizes) by up to twice its count plus 100.
    """
    base = runs[0]
    if base.stopped:
        pytest.fail(f"{call} ran more than {base.lines:,} Python lines for {base.label}: a Python loop over "
                    f"every element; {advice}", pytrace=False)
    for run in runs[1:]:
        grew_own = run.own > base.own + OWN_SLACK
        grew_numpy = run.numpy > 2 * base.numpy + 100
        if not (run.stopped or grew_own or grew_numpy):
            continue
        more = "more than " if run.stopped else ""
        where = ""
        if grew_numpy and not grew_own:
            where = (f" ({run.numpy:,} of them in NumPy's own Python code, against {base.numpy:,}: "
                     "np.vectorize and np.apply_along_axis loop in Python too)")
        pytest.fail(f"{call} ran {base.lines:,} Python lines for {base.label} and {more}{run.lines:,} for "
                    f"{run.label}{where}: a Python loop over {run.grew}; {advice}", pytrace=False)


def shape_text(shape):
    return "x".join(str(s) for s in shape)
