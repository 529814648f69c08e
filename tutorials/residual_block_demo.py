"""A residual block by hand: where the "1" of 1 + dF/dx shows up in the backward pass.

Two basic blocks of He et al. (2015), built from minires.functional ops on float32 data:

    block 1 (identity shortcut):    y = relu(BN(conv3x3(relu(BN(conv3x3(x))))) + x)
    block 2 (downsampling, 2x):     y = relu(F(x) + pad_channels(x))   # option A: no parameters

For each block the residual add records the two gradients that reach the block input x:
via_shortcut (through S(x); for an identity, the "1")
and via_residual (through the branch, J_F(x)^T g). Their sum must be x's gradient. Then a
finite-difference gradient check in float64 on small shapes.

Run:  python tutorials/residual_block_demo.py      (a few seconds; exits 1 if a check fails)
"""
import sys
import time

import numpy as np

import minires
import minires.functional as F

failures = []


def check(ok, what):
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def relu_gradient(y, dy):
    """The gradient that F.relu sends back to its input y for the upstream gradient dy (by the engine)."""
    t = minires.tensor(y, requires_grad=True)
    F.relu(t).backward(dy)
    return t.grad.data


def kaiming_normal(rng, out_channels, in_channels, k, dtype):
    """He et al. (2015) initialisation, fan_out mode: std = sqrt(2 / (out_channels * k * k))."""
    std = np.sqrt(2.0 / (out_channels * k * k))
    w = rng.standard_normal((out_channels, in_channels, k, k)) * std
    return minires.tensor(w.astype(dtype), requires_grad=True)


def block_params(rng, in_channels, planes, dtype):
    """conv1, bn1, conv2, bn2 of a basic block (BN starts as the identity: weight 1, bias 0)."""
    def bn():
        return (minires.tensor(np.ones(planes, dtype), requires_grad=True),
                minires.tensor(np.zeros(planes, dtype), requires_grad=True))
    (g1, b1), (g2, b2) = bn(), bn()
    return [kaiming_normal(rng, planes, in_channels, 3, dtype), g1, b1,
            kaiming_normal(rng, planes, planes, 3, dtype), g2, b2]


def basic_block(x, w1, g1, b1, w2, g2, b2, stride=1, name=None):
    """conv3x3-BN-ReLU-conv3x3-BN, then the residual add (with ReLU) onto the shortcut.

    Batch norm runs in training mode on the batch's statistics (no running buffers here).
    """
    out = F.conv2d(x, w1, stride=stride, padding=1)
    out = F.relu(F.batch_norm(out, None, None, g1, b1, training=True))
    out = F.conv2d(out, w2, padding=1)
    out = F.batch_norm(out, None, None, g2, b2, training=True)
    planes = w2.shape[0]
    if stride == 1 and x.shape[1] == planes:
        shortcut = x                                        # identity
    else:
        shortcut = F.pad_channels(x, planes, stride=stride)  # option A: subsample, zero-pad channels
    return F.residual_add(out, shortcut, name=name)


def main():
    started = time.perf_counter()
    rng = np.random.default_rng(0)

    # ------------------------------------------------------------ forward and backward, float32
    print("Two residual blocks on float32 data: (8, 16, 16, 16) -> (8, 32, 8, 8)")
    x = minires.tensor(rng.standard_normal((8, 16, 16, 16)).astype(np.float32), requires_grad=True)
    p1 = block_params(rng, 16, 16, np.float32)
    p2 = block_params(rng, 16, 32, np.float32)

    with minires.record_residuals() as records:
        h = basic_block(x, *p1, name="block1 (identity)")
        h.retain_grad()                                     # keep block 2's input gradient
        y = basic_block(h, *p2, stride=2, name="block2 (downsample, option A)")
        # Project onto a fixed random tensor: a loss whose gradient is not trivially uniform.
        R = minires.tensor(rng.standard_normal(y.shape).astype(np.float32))
        loss = (y * R).sum()
        loss.backward()

    check(len(records) == 2, f"record_residuals collected {len(records)} records (expected 2)")
    check(y.grad_fn.record is records[1], "y.grad_fn.record is the last block's record")

    for record, block_input in zip(records, (x, h)):
        s, r = np.linalg.norm(record.via_shortcut), np.linalg.norm(record.via_residual)
        print(f"\n{record.name}: input shape {record.input_shape}")
        print(f"  |via_shortcut| = {s:.4f}   (the '1' path)")
        print(f"  |via_residual| = {r:.4f}   (the dF/dx path)")
        print(f"  |input grad|   = {np.linalg.norm(block_input.grad.data):.4f}")
        check(record.input_shape == block_input.shape, "the record found the block input")
        check(np.allclose(record.input_grad, block_input.grad.data, rtol=1e-4, atol=1e-6),
              "via_shortcut + via_residual == the gradient at the block input")

    # What the shortcut passes back, computed here without the residual add's kernel: the gradient
    # through the ReLU after the add, by the engine's own ReLU at the block output (relu(y) = y
    # there, and it is positive where relu(F(x) + S(x)) was).
    # ANSWER residual.add_backward
    # For the identity that gradient is what x receives (the "1"); for option A, its first channels
    # at the kept pixels and zero at every other pixel.
    # END ANSWER
    ident, down = records
    g1 = relu_gradient(h.data, h.grad.data)                 # dy of block 1 is the gradient at h
    g2 = relu_gradient(y.data, R.data)                      # dy of block 2 is R
    check(np.array_equal(ident.via_shortcut, g1),
          "identity shortcut: via_shortcut is the gradient through the add's ReLU, the '1' of 1 + dF/dx")
    c = down.input_shape[1]
    expected = np.zeros(down.input_shape, np.float32)
    expected[:, :, ::2, ::2] = g2[:, :c]
    check(np.array_equal(down.via_shortcut, expected),
          "option A shortcut: via_shortcut is g's first channels at every 2nd pixel, zero elsewhere")

    # ------------------------------------------------------------ gradient check, float64
    print("\nGradient check (float64, central differences, output projected onto a random R)")
    for name, (cin, planes, stride) in {"identity block": (2, 2, 1),
                                         "downsampling block": (2, 4, 2)}.items():
        x64 = minires.tensor(rng.standard_normal((2, cin, 4, 4)), requires_grad=True)
        params = block_params(rng, cin, planes, np.float64)
        report = minires.gradcheck(lambda x, *p: basic_block(x, *p, stride=stride),
                                   [x64] + params, raise_exception=False)
        print(f"{name}: x, conv1.weight, bn1.weight, bn1.bias, conv2.weight, bn2.weight, bn2.bias")
        print("  " + str(report).replace("\n", "\n  "))
        check(report.ok, f"{name}: analytic gradients match finite differences")

    print(f"\n{'all checks passed' if not failures else f'{len(failures)} check(s) FAILED'} "
          f"in {time.perf_counter() - started:.2f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
