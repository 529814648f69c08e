"""The backward pass: deep graphs, fan-out, accumulation, freeing the graph, no_grad, hooks, errors."""
import sys

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Function, Tensor, optim

pytestmark = pytest.mark.autograd  # the engine's tests of what assignment 1 builds


def leaf(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


# ---------------------------------------------------------------- deep graphs

def test_5000_op_chain_backward_is_iterative():
    x = leaf([1.0, 2.0])
    y = x
    for k in range(2500):  # 5,000 ops: a multiply and an add per step
        y = y * 1.0001 + 0.001
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # a recursive walk of 5,000 nodes could not survive this
    try:
        y.sum().backward()
    finally:
        sys.setrecursionlimit(limit)
    np.testing.assert_allclose(x.grad.numpy(), [1.0001 ** 2500] * 2, rtol=1e-10)


def test_deep_chain_of_mixed_ops_and_intermediate_retain_grad():
    x = leaf([0.3])
    y = x
    mid = None
    for k in range(5000):
        y = -y if k % 2 else y.exp().log()  # identity overall, 5,000 ops deep (plus a few)
        if k == 2500:
            mid = y.retain_grad()
    y.backward(np.array([2.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0], rtol=1e-9)
    np.testing.assert_allclose(abs(mid.grad.numpy()), [2.0], rtol=1e-9)


# ---------------------------------------------------------------- fan-out

def test_x_plus_x():
    x = leaf([1.0, -3.0])
    (x + x).backward(np.array([1.0, 5.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 10.0])


def test_x_times_x_times_x():
    x = leaf([2.0, -1.0])
    (x * x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [12.0, 3.0])


def test_tensor_used_many_times_accumulates_every_path():
    x = leaf([1.5, 2.0])
    a, b = 3.0, -2.0
    y = x * a + x * b + x + x.exp() + x * x
    y.backward(np.array([1.0, 1.0]))
    xv = np.array([1.5, 2.0])
    np.testing.assert_allclose(x.grad.numpy(), a + b + 1 + np.exp(xv) + 2 * xv, rtol=1e-12)


def test_fan_out_accumulation_does_not_corrupt_shared_gradient_arrays():
    # Add hands the same array to both inputs; summing three arrivals at `a`
    # (two of them the same array) must not write into arrays other tensors hold.
    x = leaf([1.0, 2.0])
    a = x * 1.0
    tmp = (a + a).retain_grad()
    u = (tmp + a).retain_grad()
    w = u * 1.0
    w.backward(np.array([1.0, 1.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    np.testing.assert_array_equal(tmp.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(u.grad.numpy(), [1.0, 1.0])


def test_leaf_gradients_never_alias_each_other_or_the_upstream_gradient():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    g = np.array([1.0, 1.0])
    (a + b).backward(g)
    g[:] = 100.0
    a.grad.data[:] = -7.0
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])


def test_backward_of_a_leaf_does_not_alias_the_given_gradient():
    x = leaf([1.0, 2.0])
    g = np.array([3.0, 4.0])
    x.backward(g)
    g[:] = 0.0
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])


def test_leaf_gradient_does_not_alias_what_a_hook_returned():
    x = leaf([1.0, 2.0])
    replacement = Tensor(np.array([5.0, 6.0]))
    x.register_hook(lambda g: replacement)
    (x + x).backward(np.array([1.0, 1.0]))  # two arrivals: the engine owns the summed array
    replacement.data[:] = -1.0
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 6.0])


def test_residual_pattern_identity_plus_branch():
    rng = np.random.default_rng(0)
    w_np = rng.standard_normal((3, 3))
    x_np = rng.standard_normal((2, 3))
    g = rng.standard_normal((2, 3))
    x, w = leaf(x_np), leaf(w_np)
    h = x @ w
    y = F.relu(h) + x  # y = relu(x W) + x
    y.backward(g)
    mask = (x_np @ w_np > 0)
    np.testing.assert_allclose(x.grad.numpy(), g + (g * mask) @ w_np.T, rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), x_np.T @ (g * mask), rtol=1e-12)


# ---------------------------------------------------------------- accumulation and freeing

def test_gradients_accumulate_across_two_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 2).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 + 2 * 1.0, 2 + 2 * 2.0])
    x.zero_grad()
    assert x.grad is None


def test_retain_graph_false_frees_the_graph():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])  # the failed call added nothing


def test_retain_graph_true_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])
    y.backward()  # the last one may free it
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 12.0])
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_freed_graph_error_through_functional_op():
    x = leaf(np.ones((1, 1, 3, 3)))
    w = leaf(np.ones((1, 1, 2, 2)))
    y = F.conv2d(x, w)
    y.backward(np.ones((1, 1, 2, 2)))
    with pytest.raises(RuntimeError, match="Conv2d.*retain_graph"):
        y.backward(np.ones((1, 1, 2, 2)))


# ---------------------------------------------------------------- no_grad

def test_no_grad_builds_no_graph():
    x = leaf([1.0, 2.0])
    assert minires.is_grad_enabled()
    with minires.no_grad():
        assert not minires.is_grad_enabled()
        y = x * 2 + 1
        z = F.relu(y).exp().sum()
    assert minires.is_grad_enabled()
    for t in (y, z):
        assert not t.requires_grad and t.grad_fn is None
    np.testing.assert_array_equal(y.numpy(), [3.0, 5.0])
    with pytest.raises(RuntimeError):
        z.backward()
    assert x.grad is None


def test_no_grad_as_decorator_nesting_and_exceptions():
    x = leaf([1.0])

    @minires.no_grad()
    def f(t):
        return t * 3

    assert f(x).grad_fn is None
    with minires.no_grad():
        with minires.enable_grad():
            assert (x * 2).grad_fn is not None
        assert (x * 2).grad_fn is None
    with pytest.raises(ZeroDivisionError):
        with minires.no_grad():
            1 / 0
    assert minires.is_grad_enabled()
    assert (x * 2).requires_grad


def test_ops_on_tensors_without_grad_build_no_graph():
    a = Tensor(np.ones(3))
    y = a * 2 + a.exp()
    assert not y.requires_grad and y.grad_fn is None


# ---------------------------------------------------------------- hooks

def test_hook_is_called_with_the_gradient():
    x = leaf([1.0, 2.0, 3.0])
    h = x * 2
    seen = []
    h.register_hook(lambda g: seen.append(g.numpy().copy()))
    (h * h).sum().backward()
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], 2 * np.array([2.0, 4.0, 6.0]))
    np.testing.assert_allclose(x.grad.numpy(), 2 * 2 * np.array([2.0, 4.0, 6.0]))


def test_hook_can_replace_the_gradient():
    x = leaf([1.0, 2.0])
    h = x * 3
    h.register_hook(lambda g: g * 0.5)
    h.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.5, 1.5])
    # on a leaf: what reaches .grad is the replaced gradient
    w = leaf([1.0, 1.0])
    w.register_hook(lambda g: Tensor(np.array([7.0, 8.0])))
    (w * 2).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [7.0, 8.0])


def test_hook_returning_none_keeps_the_gradient_and_hooks_chain():
    x = leaf([1.0])
    calls = []
    x.register_hook(lambda g: calls.append("a"))
    x.register_hook(lambda g: g * 10)
    x.register_hook(lambda g: calls.append(float(g.item())))
    (x * 2).sum().backward()
    assert calls == ["a", 20.0]
    np.testing.assert_array_equal(x.grad.numpy(), [20.0])


def test_hook_handle_remove():
    x = leaf([1.0])
    calls = []
    handle = x.register_hook(lambda g: calls.append(1) or g * 100)
    (x * 2).sum().backward()
    assert calls == [1] and x.grad.item() == 200.0
    handle.remove()
    handle.remove()  # twice is harmless
    x.grad = None
    (x * 2).sum().backward()
    assert calls == [1] and x.grad.item() == 2.0


def test_hook_with_wrong_shape_is_rejected():
    x = leaf([1.0, 2.0])
    x.register_hook(lambda g: Tensor(np.ones(3)))
    with pytest.raises(minires.ShapeError, match=r"\(3,\)"):
        (x * 2).sum().backward()


def test_function_hook_sees_what_backward_returned_and_the_gradient_it_was_given():
    a = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([4.0, 5.0, -6.0]), requires_grad=True)
    y = a * b
    seen = []
    y.grad_fn.register_hook(lambda grad_inputs, grad_output: seen.append((grad_inputs, grad_output.copy())))
    G = np.array([0.5, -1.0, 2.0])
    y.backward(G)
    (da, db), g = seen[0]
    np.testing.assert_array_equal(g, G)
    np.testing.assert_array_equal(da, G * b.numpy())
    np.testing.assert_array_equal(db, G * a.numpy())
    np.testing.assert_array_equal(a.grad.numpy(), da)  # watching changes nothing


def test_function_hook_return_value_is_ignored_and_handle_removes_it():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = a * 3.0
    calls = []
    handle = y.grad_fn.register_hook(lambda gi, go: calls.append(1) or (gi[0] * 100, None))
    y.backward(np.ones(2), retain_graph=True)
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 3.0])
    handle.remove()
    y.backward(np.ones(2))
    assert calls == [1]
    np.testing.assert_array_equal(a.grad.numpy(), [6.0, 6.0])


def test_function_hooks_are_dropped_with_the_graph():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = a * 2.0
    y.grad_fn.register_hook(lambda gi, go: None)
    y.backward(np.ones(2))
    assert y.grad_fn._hooks == () and y.grad_fn.inputs is None


def test_register_hook_needs_requires_grad():
    with pytest.raises(RuntimeError, match="require"):
        Tensor(np.ones(2)).register_hook(lambda g: g)


# ---------------------------------------------------------------- errors

def test_non_scalar_backward_without_grad_raises():
    x = leaf(np.ones((2, 3)))
    y = x * 2
    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        y.backward()
    with pytest.raises(minires.ShapeError, match=r"\(3, 2\)"):
        y.backward(np.ones((3, 2)))
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))


def test_single_element_non_scalar_backward_is_allowed():
    x = leaf([[3.0]])
    (x * x).backward()
    assert x.grad.numpy().tolist() == [[6.0]]


def test_backward_of_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="require"):
        Tensor(np.ones(1)).backward()


@pytest.mark.parametrize("make", [
    lambda: Tensor(np.arange(3), requires_grad=True),
    lambda: minires.tensor([1, 2], requires_grad=True),
    lambda: minires.arange(3).requires_grad_(),
    lambda: minires.zeros(2, dtype=np.int32, requires_grad=True),
])
def test_requires_grad_on_integer_tensors_raises(make):
    with pytest.raises(minires.DTypeError, match="int"):
        make()


def test_requires_grad_setter_on_integer_tensor_raises():
    t = minires.tensor([1, 2])
    with pytest.raises(minires.DTypeError, match="int64"):
        t.requires_grad = True
    assert not t.requires_grad


# ---------------------------------------------------------------- custom functions

class ScaleFirst(Function):
    """y = 2 a + b (b gets no gradient: returns None for it)."""

    def forward(self, a, b):
        return 2 * a + b

    def backward(self, grad):
        return 2 * grad, None


def test_custom_function_none_gradient_and_needs_input_grad():
    a, b = leaf([1.0]), leaf([5.0])
    y = ScaleFirst.apply(a, b)
    assert y.grad_fn.needs_input_grad == (True, True)
    y.sum().backward()
    assert a.grad.item() == 2.0 and b.grad is None
    y2 = ScaleFirst.apply(leaf([1.0]), Tensor(np.array([1.0])))
    assert y2.grad_fn.needs_input_grad == (True, False)


class WrongShape(Function):
    def forward(self, a):
        return a * 1

    def backward(self, grad):
        return grad[:1]


def test_backward_returning_wrong_shape_is_named():
    x = leaf([1.0, 2.0])
    with pytest.raises(minires.ShapeError, match="WrongShape"):
        WrongShape.apply(x).sum().backward()


# ---------------------------------------------------------------- in-place changes after forward

def test_versions_count_in_place_changes_and_views_share_them():
    x = leaf([1.0, 2.0, 3.0])
    assert x._version == 0
    x.data -= 1.0  # through the setter: the same array, changed in place
    x.data = x.data * 2  # a new array counts too: the tensor's value changed
    assert x._version == 2
    v, d, row = x.reshape(3, 1), x.detach(), x[1:]
    assert v._version == d._version == row._version == 2
    row.data += 1  # a view's change is its base's change, as in PyTorch
    assert x._version == v._version == d._version == 3
    assert (x * 2)._version == 0  # a fresh result has a counter of its own
    minires.autograd.increment_version(x)
    assert x._version == 4


def test_a_leaf_changed_after_forward_makes_backward_raise_with_pytorchs_words():
    w, x = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    y = (w * x).sum()
    w.data -= 0.5
    with pytest.raises(RuntimeError) as info:
        y.backward()
    msg = str(info.value)
    assert msg.startswith("Mul: one of the variables needed for gradient computation has been modified "
                          "by an inplace operation")
    assert "input 0 of Mul (shape (2,)" in msg and "is at version 1; expected version 0 instead" in msg
    assert w.grad is None and x.grad is None  # nothing was accumulated from a wrong backward


def test_a_non_leaf_changed_after_forward_makes_backward_raise():
    x = leaf([0.5, 1.0])
    h = x * 3  # a non-leaf that the next op saves
    y = (h * h).sum()
    h.data += 1
    with pytest.raises(RuntimeError, match=r"Mul: .*input 0 of Mul .*version 1; expected version 0"):
        y.backward()


def test_a_saved_output_changed_after_forward_makes_backward_raise():
    x = leaf([0.5, 1.0])
    y = x.exp()  # Exp's backward reads y itself
    y.data *= 2
    with pytest.raises(RuntimeError, match=r"Exp: .*the output of Exp \(shape \(2,\).*version 1; expected "):
        y.sum().backward()


@pytest.mark.parametrize("view", [lambda h: h.reshape(2, 1), lambda h: h[:1], lambda h: h.detach(),
                                  lambda h: h.T])
def test_a_change_through_a_view_is_caught(view):
    x = leaf([0.5, 1.0])
    h = x * 3
    y = (h * h).sum()
    view(h).data += 1  # changes h's memory
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def small_model():
    minires.manual_seed(0)
    return minires.nn.Sequential(minires.nn.Conv2d(3, 4, 3), minires.nn.BatchNorm2d(4), minires.nn.ReLU(),
                                 minires.nn.AdaptiveAvgPool2d(1), minires.nn.Flatten(), minires.nn.Linear(4, 3))


def batch():
    return minires.randn(4, 3, 6, 6, rng=np.random.default_rng(0)), minires.tensor([0, 1, 2, 0])


def test_optimizer_step_between_forward_and_backward_raises():
    model, (x, y) = small_model(), batch()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    loss = F.cross_entropy(model(x), y)
    opt.step()  # changes the weights the graph saved
    with pytest.raises(RuntimeError, match=r"LinearFunction: .*input 1 of LinearFunction \(shape \(3, 4\)"):
        loss.backward()


def scale_through_state_dict(model):
    state = model.state_dict()["5.weight"]  # detached, sharing memory and version counter
    state.data *= 2


@pytest.mark.parametrize("change", [
    lambda m: m.load_state_dict(m.state_dict()),
    lambda m: minires.nn.init.kaiming_normal_(m[0].weight),
    lambda m: minires.nn.init.constant_(m[5].weight, 0.5),
    lambda m: setattr(m[0].weight, "data", m[0].weight.data * 2),
    scale_through_state_dict,
], ids=["load_state_dict", "kaiming_normal_", "constant_", "data=", "state_dict view"])
def test_other_in_place_changes_of_weights_raise_too(change):
    model, (x, y) = small_model(), batch()
    loss = F.cross_entropy(model(x), y)
    change(model)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_no_false_alarm_in_training_retain_graph_accumulation_and_gradcheck():
    model, (x, y) = small_model(), batch()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):  # forward, backward, step: BatchNorm bumps its buffers in every forward
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    loss.backward()  # unchanged in between: fine
    opt.zero_grad()
    for half in (x[:2], x[2:]):  # gradient accumulation over two forwards
        F.cross_entropy(model(half), y[:2]).backward()
    opt.step()
    for fn in (lambda a, b: a * b, lambda a, b: (a @ b.T).exp(), lambda a, b: F.log_softmax(a * b, dim=1)):
        minires.gradcheck(fn, [leaf(np.random.default_rng(1).standard_normal((2, 3))),
                               leaf(np.random.default_rng(2).standard_normal((2, 3)))])


@pytest.mark.parametrize("name", ["resnet8", "plain8"])
def test_no_false_alarm_in_a_residual_network_step(name):
    if name not in minires.models.list():
        pytest.skip(f"no {name} here")
    minires.manual_seed(0)
    model = minires.models.get(name)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x, y = minires.randn(4, 3, 8, 8), minires.tensor([0, 1, 2, 3])
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    loss = F.cross_entropy(model(x), y)
    opt.step()  # and the same step between forward and backward is caught
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_batch_norm_bumps_its_buffers_when_it_updates_them():
    bn = minires.nn.BatchNorm2d(2)
    x = minires.randn(3, 2, 2, 2)
    bn(x)
    assert bn.num_batches_tracked._version == bn.running_mean._version == bn.running_var._version == 1
    bn.eval()(x)
    assert bn.running_mean._version == 1


OPS_VS_TORCH = {  # an op, and whether its backward reads its first input (PyTorch raises iff it does)
    "add": (lambda a, b: a + b, False), "sub": (lambda a, b: a - b, False), "mul": (lambda a, b: a * b, True),
    "div": (lambda a, b: a / b, True), "matmul": (lambda a, b: a @ b.T, True),
    "exp": (lambda a, b: a.exp(), False), "log": (lambda a, b: a.log(), True),
    "sqrt": (lambda a, b: a.sqrt(), False), "relu": (lambda a, b: a.relu(), False),
    "sigmoid": (lambda a, b: a.sigmoid(), False), "sum": (lambda a, b: a.sum(1), False),
    "mean": (lambda a, b: a.mean(0), False), "reshape": (lambda a, b: a.reshape(-1), False),
    "permute": (lambda a, b: a.permute(1, 0), False), "getitem": (lambda a, b: a[1], False),
    "linear": (lambda a, b: F.linear(a, b), True), "log_softmax": (lambda a, b: F.log_softmax(a, 1), False),
}


@pytest.mark.parametrize("name", sorted(OPS_VS_TORCH))
def test_which_in_place_changes_raise_agrees_with_pytorch(name, torch):
    fn, reads_input = OPS_VS_TORCH[name]
    data = np.random.default_rng(0).uniform(0.5, 2.0, (2, 3))
    a, b = leaf(data), leaf(data[::-1].copy())
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (data, data[::-1].copy()))
    tfn = {"linear": lambda a, b: torch.nn.functional.linear(a, b),
           "log_softmax": lambda a, b: torch.log_softmax(a, 1)}.get(name, fn)
    y, ty = fn(a, b).sum(), tfn(ta, tb).sum()
    a.data += 1.0
    with torch.no_grad():
        ta.add_(1.0)
    raised = []
    for run in (y.backward, ty.backward):
        try:
            run()
            raised.append(False)
        except RuntimeError as exc:
            assert "modified by an inplace operation" in str(exc)
            raised.append(True)
    assert raised == [reads_input, reads_input], f"{name}: minires raised {raised[0]}, torch {raised[1]}"
    if not reads_input:  # no alarm: then the gradient is the one PyTorch gives
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-12)


def test_backward_frees_each_tensor_once_its_gradient_has_moved_on():
    """The graph's intermediate tensors go during backward, not at its end: the memory peak is lower."""
    import gc
    import weakref
    x = minires.tensor(np.ones(3), requires_grad=True)
    a = x * 2.0
    b = a * 3.0
    later = weakref.ref(b)
    y = (b * 4.0).sum()
    del b
    seen = []
    a.register_hook(lambda g: seen.append(later() is None))  # runs after b's gradient has reached a
    gc.disable()  # reference counting alone must free it
    try:
        y.backward()
    finally:
        gc.enable()
    assert seen == [True], "b was still alive when backward reached a: the graph is held until backward ends"
    np.testing.assert_array_equal(x.grad.numpy(), np.full(3, 24.0))
    x2 = minires.tensor(np.ones(3), requires_grad=True)
    b2 = (x2 * 2.0) * 3.0
    kept = weakref.ref(b2)
    y2 = (b2 * 4.0).sum()
    del b2
    y2.backward(retain_graph=True)
    assert kept() is not None, "retain_graph=True must keep the graph"
