"""The readable reference kernels: plain NumPy, always available.

Every function takes arrays and returns arrays; nothing here knows about
tensors or autograd. Shapes follow the API (N, C, H, W). Faster backends
provide the same functions with the same signatures (see
``kernels/__init__.py``).

Memory layout: the convolutions work channels first, as the GEMM lays its
rows out, and hand back (N, C, H, W) *views* of that (C, N, H, W) memory
instead of copying it into NCHW order. NumPy's elementwise ops and
reductions follow whatever order the memory is in, so batch norm, ReLU and
the residual add keep it, and the next convolution finds its input already
channels first: its im2col and the backward's ``_grad_rows`` become plain
copies or no copy at all.
"""
import numpy as np

from ._index import conv_output_size  # (size + 2*padding - kernel) // stride + 1, along one axis

NAME = "numpy"


def _pad(x, ph, pw, value=0.0):
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


# ---------------------------------------------------------------- im2col / col2im

def im2col(x, kh, kw, stride, padding):
    """Unfold x (N, C, H, W) into columns (C*kh*kw, N*OH*OW); stride and padding are (h, w) pairs.

    Row (c, i, j) holds the input pixel that kernel tap (i, j) of channel c
    sees at every output position (n, oy, ox), so a convolution becomes one GEMM.
    """
    # BEGIN EXERCISE conv.im2col
    # HINT: pad x with _pad, then for each kernel tap (i, j) take one strided slice of the padded image
    # HINT: (the pooling kernels below slice windows the same way); a Python loop over pixels is too slow.
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=x.dtype)  # padded and channels first, as the columns lie
    xp[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]  # (C, N, OH, OW)
    return cols.reshape(c * kh * kw, n * oh * ow)
    # END EXERCISE


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: scatter-add columns back into an (N, C, H, W) image (a view of (C, N, H, W) memory).

    ``x_shape`` is the image's (N, C, H, W); stride and padding are (h, w) pairs, as in im2col.
    """
    # BEGIN EXERCISE conv.col2im
    # HINT: undo im2col's layout, then add each tap's (i, j) columns into a zero padded image at the
    # HINT: strided positions that tap read (pixels read by several taps get the sum); cut the padding off.
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cols.reshape(c, kh, kw, n, oh, ow)
    xp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)  # channels first, as in the columns
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols[:, i, j]
    return xp[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)  # no copy back to NCHW order
    # END EXERCISE


# ---------------------------------------------------------------- convolution

def conv2d_forward(x, weight, stride, padding):
    """y = W * x as one GEMM: (O, C*kh*kw) @ (C*kh*kw, N*OH*OW) -> (N, O, OH, OW), a view of (O, N, OH, OW) memory."""
    # BEGIN EXERCISE conv.forward
    # HINT: im2col, one matrix product with the weight flattened to (O, C*kh*kw), then bring the
    # HINT: (O, N*OH*OW) result to shape (N, O, OH, OW) (reshape and transpose: a view, no copy needed).
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    cols = im2col(x, kh, kw, stride, padding)
    y = weight.reshape(o, -1) @ cols  # (O, N*OH*OW)
    oh = conv_output_size(x.shape[2], kh, stride[0], padding[0])
    ow = conv_output_size(x.shape[3], kw, stride[1], padding[1])
    return y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    # END EXERCISE


def _grad_rows(grad_out):
    """(N, O, OH, OW) -> (O, N*OH*OW), the layout of the forward GEMM's output."""
    o = grad_out.shape[1]
    return grad_out.transpose(1, 0, 2, 3).reshape(o, -1)


def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    # BEGIN EXERCISE conv.backward_input
    # HINT: return dx of shape x_shape, the gradient of sum(conv2d_forward(x) * grad_out) with respect to x;
    # HINT: differentiate the forward GEMM, then undo im2col with its adjoint; _grad_rows lays grad_out out.
    """dx = col2im(W^T @ dy).

    At stride 1 the same sum is itself a convolution (the "full" convolution
    of backprop): dy, padded by k - 1 - p, correlated with the kernel flipped
    in both spatial axes and with its input and output channels swapped.
    Gathering columns (im2col) costs a third to a half of scattering them
    back (col2im), so that route is taken where it applies and dy has no
    more channels than x (else dy's columns outgrow x's: the first layer).
    """
    o, c, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    if (sh, sw) == (1, 1) and ph < kh and pw < kw and o <= c:
        flipped = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # (C, O, kh, kw), taps reversed
        return conv2d_forward(grad_out, flipped, stride, (kh - 1 - ph, kw - 1 - pw))
    dcols = weight.reshape(o, -1).T @ _grad_rows(grad_out)
    return col2im(dcols, x_shape, kh, kw, stride, padding)
    # END EXERCISE


def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    # BEGIN EXERCISE conv.backward_weight
    # HINT: return dW of shape weight_shape, the gradient of sum(conv2d_forward(x) * grad_out) with respect
    # HINT: to the weight: differentiate the forward GEMM (recompute the columns of x).
    """dW = dy @ im2col(x)^T; the columns are recomputed rather than kept from forward.

    Computed as (im2col(x) @ dy^T)^T, the same product: multithreaded BLAS
    splits dy @ cols^T along its long inner dimension and ran it up to 25x
    slower on two busy cores.
    """
    _, _, kh, kw = weight_shape
    cols = im2col(x, kh, kw, stride, padding)
    return (cols @ _grad_rows(grad_out).T).T.reshape(weight_shape)
    # END EXERCISE


# ---------------------------------------------------------------- residual add

def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s)."""
    y = f + s
    if relu:
        np.maximum(y, 0, out=y)
    return y


def residual_add_backward(grad_out, y, relu):
    # BEGIN EXERCISE residual.add_backward
    # HINT: return (grad into the residual branch f, grad into the shortcut s) for y = relu(f + s),
    # HINT: or y = f + s when relu is False; y is the forward's output.
    """Returns (grad into the residual branch, grad into the shortcut).

    Both are g = dy * (y > 0): the add passes the gradient unchanged to each
    of its inputs. The shortcut's copy is the "1" of dx = g (1 + dF/dx).
    """
    g = grad_out * (y > 0) if relu else grad_out
    return g, g
    # END EXERCISE


# ---------------------------------------------------------------- batch norm

def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W)."""
    # BEGIN EXERCISE bn.stats
    # HINT: return (mean, var), each of shape (C,) and x's dtype; biased: divide by N*H*W.
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    return mean, var
    # END EXERCISE


def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift, per channel: the op folds (x - mean) * invstd * weight + bias into one scale and shift."""
    # BEGIN EXERCISE bn.normalize
    # HINT: scale and shift have shape (C,): broadcast them over (N, C, H, W) with [None, :, None, None].
    y = x * scale[None, :, None, None]
    y += shift[None, :, None, None]  # in place: one temporary less
    return y
    # END EXERCISE


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    # BEGIN EXERCISE bn.grad_sums
    # HINT: return (dbias, dweight), each of shape (C,): the gradients with respect to bias and weight of
    # HINT: sum(y * grad_out) for y = xhat * weight + bias, xhat = (x - mean) * invstd. No loops: sums over (N, H, W).
    """Returns (dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel over (N, H, W).

    The same in training and in eval: only xhat's statistics differ.
    """
    axes = (0, 2, 3)
    xhat = x - mean[None, :, None, None]
    xhat *= invstd[None, :, None, None]  # in place (here and below): one temporary less per step
    return grad_out.sum(axis=axes), (grad_out * xhat).sum(axis=axes)
    # END EXERCISE


def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    # BEGIN EXERCISE bn.backward
    # HINT: return dx for y = xhat * weight + bias, xhat = (x - mean) * invstd, where mean and invstd are the
    # HINT: batch's own statistics, so they depend on x too; scale = invstd * weight, and dbias, dweight are
    # HINT: batch_norm_grad_sums' results. Per-channel broadcasts, no loops.
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W: the input gradient in training.

    The batch's mean and variance depend on x, which brings the two mean
    terms. (In eval the statistics are constants and the op needs only
    dx = dy * scale.)
    """
    m = grad_out.size // grad_out.shape[1]
    xhat = x - mean[None, :, None, None]
    xhat *= invstd[None, :, None, None]
    dx = grad_out - (dbias / m)[None, :, None, None]
    xhat *= (dweight / m)[None, :, None, None]
    dx -= xhat
    dx *= scale[None, :, None, None]
    return dx
    # END EXERCISE


# ---------------------------------------------------------------- pooling

def max_pool2d_forward(x, kernel, stride, padding):
    """Returns (y, argmax) where argmax in [0, kh*kw) is the winning tap of each window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = _pad(x, ph, pw, value=-np.inf)
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    argmax = np.zeros((n, c, oh, ow), dtype=np.int32)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
            better = window > y  # strict: the first maximum wins, as in PyTorch
            y = np.where(better, window, y)
            argmax[better] = i * kw + j
    return y, argmax


def max_pool2d_backward(grad_out, argmax, x_shape, kernel, stride, padding):
    """Route each output gradient to the input pixel that won its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    oh, ow = grad_out.shape[2:]
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad_out.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += grad_out * (argmax == i * kw + j)
    return dxp[:, :, ph:ph + h, pw:pw + w]


def avg_pool2d_forward(x, kernel, stride, padding):
    """Window mean; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = _pad(x, ph, pw)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    return y / (kh * kw)


def avg_pool2d_backward(grad_out, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly over its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    oh, ow = grad_out.shape[2:]
    share = grad_out / (kh * kw)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad_out.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += share
    return dxp[:, :, ph:ph + h, pw:pw + w]
