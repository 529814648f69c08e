"""Shape errors from every op are ShapeErrors that name the op and both shapes, and a layer names itself.

NumPy's own words ("operands could not be broadcast together with shapes
(8,16,32,32) (8,32,16,16)") name neither the op nor the layer, and a bare
ValueError or IndexError escapes ``Module.__call__`` unlabelled. Each op
below is driven into a shape mismatch twice: called directly, where the
message must start with the op's name, and inside a module's forward, where
it must start with the module's type and path. The table of broadcasting
ops is checked against ``minires.ops`` itself, so a new op cannot skip it.
"""
import inspect
import operator
import pickle

import numpy as np
import pytest

import minires
import minires.functional as F
import minires.nn as nn
from minires import ShapeError, Tensor, ops
from minires.errors import DimError, IndexShapeError


def f32(*shape):
    return Tensor(np.ones(shape, dtype=np.float32))


A, B = (8, 16, 32, 32), (8, 32, 16, 16)

# every Function that broadcasts two operands: its name in messages, the Python operator a learner writes
BROADCASTING = {"add": (ops.Add, operator.add), "sub": (ops.Sub, operator.sub), "mul": (ops.Mul, operator.mul),
                "div": (ops.Div, operator.truediv), "pow": (ops.Pow, operator.pow)}


def test_the_table_covers_every_broadcasting_op():
    found = {cls.op for _, cls in inspect.getmembers(ops, inspect.isclass)
             if issubclass(cls, ops.Broadcasting) and cls is not ops.Broadcasting}
    assert found == set(BROADCASTING)


def _calls(name):
    """The ways to reach op ``name`` with shapes A and B: the operator, its reflected form, the Function."""
    cls, symbol = BROADCASTING[name]
    return {"operator": lambda: symbol(f32(*A), f32(*B)),
            "reflected": lambda: symbol(np.ones(A, dtype=np.float32), f32(*B)),
            "function": lambda: cls.apply(f32(*A), f32(*B))}


@pytest.mark.parametrize("via", ["operator", "reflected", "function"])
@pytest.mark.parametrize("name", sorted(BROADCASTING))
def test_broadcasting_ops_name_themselves_both_shapes_and_the_dim(name, via):
    with pytest.raises(ShapeError) as info:
        _calls(name)[via]()
    assert str(info.value) == (f"{name}: shapes {A} and {B} do not broadcast: sizes 32 and 16 at dim -1 "
                               "(aligned from the right, sizes must be equal or 1)")


@pytest.mark.parametrize("a, b, sizes, d", [((2, 3), (4,), (3, 4), -1), ((5, 1, 3), (4, 3, 3), (5, 4), -3),
                                           ((7,), (2, 6, 1), None, None)])
def test_the_dim_named_is_one_that_does_not_fit(a, b, sizes, d):
    if sizes is None:                                          # these broadcast
        assert (f32(*a) * f32(*b)).shape == np.broadcast_shapes(a, b)
        return
    with pytest.raises(ShapeError, match=rf"sizes {sizes[0]} and {sizes[1]} at dim {d} "):
        f32(*a) * f32(*b)


def test_numpys_other_complaints_pass_through_unchanged():
    with pytest.raises(ValueError, match="Integers to negative integer powers") as info:
        minires.tensor([2]) ** minires.tensor([-1])
    assert not isinstance(info.value, ShapeError)


# every op with a shape check: (name it reports, a call that fails, the words the message must hold)
FAILURES = [
    ("add", lambda: f32(*A) + f32(*B), [str(A), str(B)]),
    ("matmul", lambda: f32(2, 3) @ f32(2, 3), ["(2, 3) and (2, 3)"]),
    ("eq", lambda: f32(*A) == f32(*B), [str(A), str(B)]),
    ("lt", lambda: f32(3, 4) < np.ones(2), ["(3, 4)", "(2,)"]),
    ("reshape", lambda: f32(*A).reshape(8, 3, -1), ["(8, 3, -1)", str(A)]),
    ("permute", lambda: f32(*A).permute(0, 1), ["(0, 1)", str(A)]),
    ("transpose", lambda: f32(2, 3).transpose(0, 2), ["(2, 3)"]),
    ("flatten", lambda: f32(2, 3).flatten(1, 0), ["(2, 3)"]),
    ("sum", lambda: f32(2, 3).sum(axis=2), ["(2, 3)"]),
    ("max", lambda: f32(0, 3).max(), ["(0, 3)"]),
    ("argmax", lambda: f32(2, 3).argmax(axis=-3), ["(2, 3)"]),
    ("getitem", lambda: f32(2, 3)[2], ["index 2", "(2, 3)"]),
    ("getitem", lambda: f32(2, 3)[0, 0, 0], ["too many indices", "(2, 3)"]),
    ("getitem", lambda: f32(2, 3)[np.array([0, 1]), np.array([0, 1, 2])], ["(2, 3)"]),
    ("getitem", lambda: f32(2, 3)[np.array([True, False, True])], ["boolean index", "(2, 3)"]),
    ("item", lambda: f32(2, 3).item(), ["(2, 3)"]),
    ("bool", lambda: bool(f32(2, 3)), ["(2, 3)"]),
    ("concat", lambda: F.concat([f32(*A), f32(*B)]), [str(A), str(B)]),
    ("residual_add", lambda: F.residual_add(f32(*A), f32(*B)), [str(A), str(B)]),
    ("conv2d", lambda: F.conv2d(f32(1, 2, 4, 4), f32(3, 5, 3, 3)), ["(1, 2, 4, 4)"]),
    ("linear", lambda: F.linear(f32(2, 5), f32(4, 3)), ["(2, 5)"]),
    ("batch_norm", lambda: F.batch_norm(f32(2, 3, 2, 2), f32(4), f32(4)), ["(2, 3, 2, 2)"]),
    ("log_softmax", lambda: F.log_softmax(f32(2, 3), dim=2), ["(2, 3)"]),
    ("cross_entropy", lambda: F.cross_entropy(f32(2, 4), minires.tensor([0, 1, 2])), ["(2, 4)", "(3,)"]),
]


@pytest.mark.parametrize("name, call, words", FAILURES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FAILURES)])
def test_every_shape_failure_is_a_shape_error_naming_the_op(name, call, words):
    with pytest.raises(ShapeError) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(f"{name}: "), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


class Holder(nn.Module):
    """Runs one failing call in its forward, inside a container: the error must name both."""

    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, x):
        return self.call()


@pytest.mark.parametrize("name, call, words", FAILURES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FAILURES)])
def test_every_shape_failure_inside_a_module_names_the_layer_path_and_op(name, call, words):
    net = nn.Module()
    net.stage = nn.Sequential(nn.Identity(), Holder(call))
    with pytest.raises(ShapeError) as info:
        net.stage(f32(1))
    assert str(info.value).startswith(f"Holder(stage.1): {name}: "), str(info.value)
    assert info.value.op == name and info.value.layer == "Holder"


def test_index_errors_stay_index_errors_and_are_labelled():
    holder = nn.Sequential(Holder(lambda: f32(2, 3)[5]))
    with pytest.raises(IndexError) as info:
        holder(f32(1))
    assert isinstance(info.value, IndexShapeError) and isinstance(info.value, ShapeError)
    assert str(info.value).startswith("Holder(0): getitem: index 5 is out of bounds")
    assert issubclass(DimError, IndexShapeError)
    with pytest.raises(IndexError) as info:                    # a float index is a type problem: not a ShapeError
        f32(2, 3)[1.5]
    assert not isinstance(info.value, ShapeError) and str(info.value).startswith("getitem: only integers")


# ---------------------------------------------------------------- the path through a nested model

class Block(nn.Module):
    """A block that forgot its projection: the stride-2 conv changes the shape the add needs."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)

    def forward(self, x):
        return x + self.conv1(x)


class Net(nn.Module):
    def __init__(self, skip_sequential=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(Block(16, 32, stride=2), Block(32, 32))
        self.skip_sequential = skip_sequential

    def forward(self, x):
        x = self.stem(x)
        if self.skip_sequential:                               # index the container, bypassing its __call__
            return self.layer1[1](self.layer1[0](x))
        return self.layer1(x)


BLOCK_MESSAGE = (f"Block(layer1.0): add: shapes {A} and {B} do not broadcast: sizes 32 and 16 at dim -1 "
                 "(aligned from the right, sizes must be equal or 1)")


@pytest.mark.parametrize("skip_sequential", [False, True])
def test_an_add_in_a_blocks_forward_names_the_block_and_its_path(skip_sequential):
    with pytest.raises(ShapeError) as info:
        Net(skip_sequential)(minires.randn(8, 3, 32, 32))
    assert str(info.value) == BLOCK_MESSAGE


def test_the_path_starts_where_the_call_started():
    net = Net()
    x = minires.randn(8, 16, 32, 32)
    with pytest.raises(ShapeError, match=r"^Block\(layer1\.0\): add: "):
        net.layer1(x)                                          # layer1 knows its own attribute name
    with pytest.raises(ShapeError, match=r"^Block\(0\): add: "):
        net.layer1[0](x)
    with pytest.raises(ShapeError, match=r"^Block: add: "):
        Block(16, 32, 2)(x)                                    # a module never assigned anywhere


def test_a_layers_own_op_is_not_named_twice():
    with pytest.raises(ShapeError) as info:
        Net()(minires.randn(8, 1, 32, 32))
    assert str(info.value).startswith("Conv2d(stem): expected 3 input channels, got 1")
    net = nn.Module()
    net.body = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ShapeError, match=r"^Linear\(body\.0\): expected 3 input features"):
        net.body(f32(2, 5))


def test_a_module_shared_between_two_parents_is_named_where_it_was_called():
    shared = Block(16, 32, 2)
    net = nn.Module()
    net.a = nn.Sequential(nn.Identity())
    net.b = nn.Sequential(nn.Identity(), shared)
    net.a.add_module("1", shared)                              # first registered under a, as "1"
    with pytest.raises(ShapeError, match=r"^Block\(b\.1\): add: "):
        net.b(minires.randn(2, 16, 8, 8))
    with pytest.raises(ShapeError, match=r"^Block\(a\.1\): add: "):
        net.a(minires.randn(2, 16, 8, 8))


def test_a_labelled_error_pickles_without_its_module():
    with pytest.raises(ShapeError) as info:
        Net()(minires.randn(8, 3, 32, 32))
    assert info.value.module is not None
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ShapeError and str(copy) == BLOCK_MESSAGE and copy.module is None
    with pytest.raises(IndexShapeError) as info:
        nn.Sequential(Holder(lambda: f32(2)[3]))(f32(1))
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, IndexError) and str(copy) == str(info.value)
