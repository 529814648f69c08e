"""Assignment 1, autograd: the reverse topological walk, fan-out accumulation, unbroadcast, MatMul's backward.

Run: pytest -m autograd. Each test checks one exercise; the other exercises
it would pass through are replaced by the test's own oracles, so a test
fails only for the piece it names. The order those tests use is listed by
hand for their graph (``listed_order``), not computed: no answer to
``_topological_order``.

Weights: what the handout insists on weighs most. The 3,000-op chain (no
recursion); the third gradient added in place into the array the engine
owns (an accumulation that allocates a new sum every time, as the tests'
``oracle_accumulate`` does, earns a third); unbroadcast without a Python
loop over the elements (its vectorisation cases weigh twice its other
tests together, so the loop oracle pasted in earns a third).
"""
import tracemalloc

import numpy as np
import pytest

from exercise_helpers import (check_array, check_lines_do_not_grow, check_unchanged, count_runs, numerical_gradient,
                              unbroadcast_loop)

import minires
from minires import autograd, ops
from minires.autograd import Function

pytestmark = pytest.mark.autograd


# ---------------------------------------------------------------- ops of the tests' own (no broadcasting)

class Scale(Function):
    """y = c * x."""

    def forward(self, x, c):
        self.c = c
        return x * c

    def backward(self, grad):
        return grad * self.c


class Times(Function):
    """y = a * b for equal shapes."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        return grad * self.b, grad * self.a


class Both(Function):
    """y = a + b, whose backward returns one array for both inputs (as the residual add does)."""

    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        self.returned = grad * 1.0
        self.kept = self.returned.copy()
        return self.returned, self.returned


def leaf(values, requires_grad=True):
    return minires.tensor(np.asarray(values, dtype=np.float64), requires_grad=requires_grad)


def listed_order(*tensors):
    """A stand-in for _topological_order that returns ``tensors``, the order of one graph written out by hand."""
    def order(root):
        assert root is tensors[-1], "listed_order: backward started from another root than the test listed"
        return list(tensors)
    return order


def oracle_accumulate(grads, t, g):
    """The sums _accumulate must make, each in a new array (so no op's array is ever changed)."""
    slot = grads.get(id(t))
    grads[id(t)] = [g if slot is None else slot[0] + g, slot is not None]


# ---------------------------------------------------------------- autograd.topo_order

def diamond():
    """a -> b = 2a, c = 3a -> d = b * c -> e = 5d; plus a constant input k that needs no gradient."""
    a = leaf([1.0, -2.0, 0.5])
    k = leaf([7.0, 7.0, 7.0], requires_grad=False)
    b = Scale.apply(a, c=2.0)
    c = Scale.apply(a, c=3.0)
    d = Times.apply(b, c)
    e = Times.apply(Scale.apply(d, c=5.0), k)
    return a, b, c, d, e, k


def check_order(order, root, expected):
    names = {id(t): name for name, t in expected.items()}
    listed = [names.get(id(t), f"an unexpected tensor of shape {t.shape}") for t in order]
    if len({id(t) for t in order}) != len(order):
        pytest.fail(f"_topological_order listed a tensor twice: {listed}", pytrace=False)
    missing = [n for n, t in expected.items() if id(t) not in {id(u) for u in order}]
    if missing or len(order) != len(expected):
        pytest.fail(f"_topological_order gave {listed}; expected each of {sorted(expected)} once "
                    f"(missing {missing}); leave out tensors that need no gradient", pytrace=False)
    if order[-1] is not root:
        pytest.fail(f"_topological_order must end with the root (it came last in the walk), got {listed}",
                    pytrace=False)
    position = {id(t): k for k, t in enumerate(order)}
    for t in order:
        for p in autograd._parents(t):
            if position[id(p)] > position[id(t)]:
                pytest.fail(f"_topological_order put {names[id(t)]} before {names[id(p)]}, which it was computed "
                            f"from: {listed}", pytrace=False)


@pytest.mark.exercise("autograd.topo_order", weight=2)
def test_topological_order_of_a_diamond():
    a, b, c, d, e, _ = diamond()
    e5 = e.grad_fn.inputs[0]
    order = autograd._topological_order(e)
    check_order(order, e, {"a": a, "b": b, "c": c, "d": d, "5d": e5, "e": e})


@pytest.mark.exercise("autograd.topo_order")
def test_topological_order_of_a_leaf_alone():
    a = leaf([1.0])
    order = autograd._topological_order(a)
    assert [id(t) for t in order] == [id(a)], f"the order of a lone leaf must be [leaf], got {len(order)} tensors"


@pytest.mark.exercise("autograd.topo_order", weight=3)
def test_topological_order_of_a_deep_chain_needs_no_recursion():
    x = leaf([1.0])
    t = x
    for _ in range(3000):  # far deeper than Python's recursion limit allows a recursive walk
        t = Scale.apply(t, c=1.0)
    try:
        order = autograd._topological_order(t)
    except RecursionError:
        pytest.fail("_topological_order hit Python's recursion limit on a chain of 3,000 ops: "
                    "use a stack of your own instead of recursion", pytrace=False)
    assert len(order) == 3001, f"a chain of 3,000 ops has 3,001 tensors, the order listed {len(order)}"
    assert order[0] is x and order[-1] is t, "the chain's order must start at the leaf and end at the root"


@pytest.mark.exercise("autograd.topo_order", weight=2)
def test_backward_follows_the_order(monkeypatch):
    monkeypatch.setattr(autograd, "_accumulate", oracle_accumulate)
    a, _, _, _, e, k = diamond()
    e.backward(np.ones(3))
    assert a.grad is not None, ("a.grad is None after backward: the order left a out, or listed it before the "
                                "tensors made from it, so their gradients reached it too late")
    # e = 5 * (2a) * (3a) * k = 30 k a^2  ->  de/da = 60 k a
    check_array(a.grad.numpy(), 60 * k.numpy() * a.numpy(), "a.grad after backward through a diamond")


@pytest.mark.exercise("autograd.topo_order")
def test_second_backward_through_a_freed_graph_says_retain_graph(monkeypatch):
    monkeypatch.setattr(autograd, "_accumulate", oracle_accumulate)
    a = leaf([1.0, 2.0])
    y = Scale.apply(Scale.apply(a, c=2.0), c=3.0)
    y.backward(np.ones(2))
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward(np.ones(2))  # _parents raises this: walk the graph through it


# ---------------------------------------------------------------- autograd.accumulate

@pytest.mark.exercise("autograd.accumulate")
def test_accumulate_sums_without_touching_the_arrays_it_was_given():
    t = leaf([0.0, 0.0, 0.0])
    g1, g2, g3 = (np.array(v, dtype=np.float64) for v in ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [0.5, 0.5, 0.5]))
    copies = [g.copy() for g in (g1, g2, g3)]
    grads = {}
    autograd._accumulate(grads, t, g1)
    assert id(t) in grads, "_accumulate must store the first gradient under id(t)"
    check_array(grads[id(t)][0], copies[0], "the gradient stored after one _accumulate")
    autograd._accumulate(grads, t, g2)
    autograd._accumulate(grads, t, g3)
    check_array(grads[id(t)][0], copies[0] + copies[1] + copies[2], "the gradient after three _accumulate calls")
    for k, (g, c) in enumerate(zip((g1, g2, g3), copies), 1):
        check_unchanged(g, c, f"gradient number {k} handed to _accumulate (it belongs to the op that returned it)")


@pytest.mark.exercise("autograd.accumulate", weight=6)  # the handout's point: add in place, but only into owned arrays
def test_accumulate_adds_the_third_gradient_in_place():
    size = 100_000  # 800 kB a gradient: a new sum shows in tracemalloc
    t = leaf(np.zeros(size))
    g1, g2, g3 = (np.full(size, v) for v in (1.0, 10.0, 0.5))
    grads = {}
    autograd._accumulate(grads, t, g1)
    autograd._accumulate(grads, t, g2)
    slot = grads.get(id(t))
    if not isinstance(slot, list) or len(slot) != 2:
        pytest.fail("_accumulate must keep grads[id(t)] = [gradient array, owned], a list of two; it holds "
                    f"{slot!r:.80}", pytrace=False)
    owned, flag = slot
    for k, g in enumerate((g1, g2), 1):
        if np.shares_memory(owned, g):
            pytest.fail(f"after two _accumulate calls for one tensor, grads holds gradient number {k} itself (or a "
                        "view of it): that array belongs to the op whose backward returned it. Add the two into a "
                        "new array, which the engine then owns", pytrace=False)
    if not flag:
        pytest.fail("after two _accumulate calls for one tensor, grads[id(t)] = [sum, owned] says the sum is not "
                    "owned: _accumulate made that array itself, so mark it owned (True) and add into it later",
                    pytrace=False)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        autograd._accumulate(grads, t, g3)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    if grads[id(t)][0] is not owned:
        pytest.fail("the third gradient for one tensor made a new array instead of adding into the array "
                    "_accumulate made for the second (the engine owns it): add in place, e.g. owned += g",
                    pytrace=False)
    if peak >= g3.nbytes // 2:
        pytest.fail(f"_accumulate allocated {peak:,} bytes while adding a third gradient of {g3.nbytes:,} bytes "
                    "into the owned array: a temporary sum was built and copied back; add in place "
                    "(owned += g, or np.add(owned, g, out=owned))", pytrace=False)
    check_array(owned, np.full(size, 11.5), "the owned gradient after three _accumulate calls")
    for k, (g, v) in enumerate(zip((g1, g2, g3), (1.0, 10.0, 0.5)), 1):
        check_unchanged(g, np.full(size, v), f"gradient number {k} handed to _accumulate")


@pytest.mark.exercise("autograd.accumulate")
def test_fan_out_gradients_add_up(monkeypatch):
    x = leaf([1.0, -3.0, 2.0])
    square, four_x = Times.apply(x, x), Scale.apply(x, c=4.0)
    y = Times.apply(square, four_x)  # 4 x^3, x used three times
    monkeypatch.setattr(autograd, "_topological_order", listed_order(x, square, four_x, y))
    y.backward(np.ones(3))
    check_array(x.grad.numpy(), 12 * x.numpy() ** 2, "x.grad of 4 x^3 where x fans out to three uses")


@pytest.mark.exercise("autograd.accumulate")
def test_an_array_returned_for_two_inputs_is_not_modified(monkeypatch):
    x = leaf([1.0, 2.0])
    h = Scale.apply(x, c=3.0)
    y = Both.apply(h, h)  # the same tensor on both sides: two gradients, one array
    monkeypatch.setattr(autograd, "_topological_order", listed_order(x, h, y))
    fn = y.grad_fn
    y.backward(np.array([1.0, -1.0]), retain_graph=True)
    check_array(x.grad.numpy(), [6.0, -6.0], "x.grad of 3x + 3x")
    check_unchanged(fn.returned, fn.kept, "the array Both.backward returned for its two inputs")


# ---------------------------------------------------------------- autograd.unbroadcast

UNBROADCAST_CASES = [
    ((2, 3), (2, 3)), ((4, 2, 3), (2, 3)), ((4, 2, 3), (1, 3)), ((4, 2, 3), (2, 1)), ((2, 3), (3,)),
    ((2, 3), ()), ((5, 1, 3), (1, 1, 1)), ((2, 3, 4), (3, 1)), ((3, 1, 4), (3, 1, 4)), ((2, 3, 4), (1, 3, 1)),
]


@pytest.mark.exercise("autograd.unbroadcast")
@pytest.mark.parametrize("grad_shape, shape", UNBROADCAST_CASES, ids=lambda v: "x".join(map(str, v)) or "scalar")
def test_unbroadcast_matches_the_loop(grad_shape, shape):
    grad = np.random.default_rng(0).standard_normal(grad_shape)
    got = ops.unbroadcast(grad, shape)
    check_array(got, unbroadcast_loop(grad, shape), f"unbroadcast(grad of shape {grad_shape}, {shape})")


@pytest.mark.exercise("autograd.unbroadcast", weight=11)  # twice the other 11 tests together, split in two cases
@pytest.mark.parametrize("grad_shape, shape", [((4, 2, 3), (2, 1)), ((2, 3, 4), (1, 3, 1))],
                         ids=["leading-and-stretched", "stretched-twice"])
def test_unbroadcast_is_vectorised(grad_shape, shape):
    rng = np.random.default_rng(5)
    bigger = lambda s: tuple(10 * n if n > 1 else n for n in s)  # noqa: E731
    inputs = [(f"a gradient of shape {grad_shape} to {shape}", (rng.standard_normal(grad_shape), shape), ""),
              (f"one of shape {bigger(grad_shape)} to {bigger(shape)}",
               (rng.standard_normal(bigger(grad_shape)), bigger(shape)), "the elements")]
    runs = count_runs(ops.unbroadcast, inputs)
    check_array(runs[0].result, unbroadcast_loop(inputs[0][1][0], shape), f"unbroadcast(grad of shape {grad_shape}, "
                f"{shape})")
    check_lines_do_not_grow(f"unbroadcast(grad, {shape})", runs,
                            "sum over the added and the stretched axes with grad.sum(axis=..., keepdims=...); a "
                            "loop over the axes is fine")


@pytest.mark.exercise("autograd.unbroadcast")
def test_add_and_mul_backward_give_each_operand_its_own_shape():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 1, 3)), rng.standard_normal((2, 1))
    r = rng.standard_normal((4, 2, 3))
    for op in (ops.Add, ops.Mul):
        fn = op()
        fn.needs_input_grad = (True, True)
        y = fn.forward(a, b)
        da, db = fn.backward(r)
        f = (lambda: np.sum((a + b) * r)) if op is ops.Add else (lambda: np.sum(a * b * r))
        check_array(da, numerical_gradient(f, a), f"{op.__name__}.backward's gradient for a of shape (4, 1, 3)")
        check_array(db, numerical_gradient(f, b), f"{op.__name__}.backward's gradient for b of shape (2, 1)")
        assert y.shape == (4, 2, 3)


# ---------------------------------------------------------------- autograd.matmul_backward

MATMUL_CASES = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 5)),
                ((3, 4), (4,)), ((2, 3, 4), (4,)), ((4,), (4,))]


def _matmul_grads(a, b, r, needs=(True, True)):
    fn = ops.MatMul()
    fn.needs_input_grad = needs
    fn.forward(a, b)
    grads = fn.backward(r)
    if not isinstance(grads, tuple) or len(grads) != 2:
        pytest.fail(f"MatMul.backward must return a pair (da, db), got {type(grads).__name__}", pytrace=False)
    return grads


@pytest.mark.exercise("autograd.matmul_backward")
@pytest.mark.parametrize("sa, sb", MATMUL_CASES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_backward_matches_finite_differences(monkeypatch, sa, sb):
    monkeypatch.setattr(ops, "unbroadcast", unbroadcast_loop)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    r = rng.standard_normal(np.matmul(a, b).shape)
    da, db = _matmul_grads(a, b, r)
    loss = lambda: float(np.sum(np.matmul(a, b) * r))  # noqa: E731
    check_array(da, numerical_gradient(loss, a), f"MatMul.backward's da for a {sa} @ b {sb}", rtol=1e-5, atol=1e-6)
    check_array(db, numerical_gradient(loss, b), f"MatMul.backward's db for a {sa} @ b {sb}", rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("autograd.matmul_backward")
def test_matmul_backward_skips_what_is_not_needed(monkeypatch):
    monkeypatch.setattr(ops, "unbroadcast", unbroadcast_loop)
    rng = np.random.default_rng(3)
    a, b, r = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    da, db = _matmul_grads(a, b, r, needs=(False, True))
    assert da is None, "needs_input_grad[0] is False: MatMul.backward must return None for da"
    check_array(db, numerical_gradient(lambda: float(np.sum((a @ b) * r)), b), "MatMul.backward's db")


@pytest.mark.exercise("autograd.matmul_backward")
def test_matmul_backward_matches_pytorch(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(ops, "unbroadcast", unbroadcast_loop)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((5, 4, 2))
    r = rng.standard_normal((2, 5, 3, 2))
    da, db = _matmul_grads(a, b, r)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (torch.matmul(ta, tb) * torch.tensor(r)).sum().backward()
    check_array(da, ta.grad.numpy(), "MatMul.backward's da against PyTorch", rtol=1e-10, atol=1e-10)
    check_array(db, tb.grad.numpy(), "MatMul.backward's db against PyTorch", rtol=1e-10, atol=1e-10)
