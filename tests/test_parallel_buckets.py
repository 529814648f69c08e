"""DistributedDataParallel's buckets in the order backward makes the gradients, and its packed buffer broadcast.

A model that ends in a Linear layer gets the Linear's gradients last (the
engine reaches a leaf weight after the whole graph below it), so buckets cut
in reverse parameter order cannot start until backward is over. After the
first backward DDP rebuilds them in the order the gradients came: checked here
by the order itself and by how many buckets had started when each gradient
arrived. (That the rebuilt buckets still give one process's steps is checked
by tests/test_distributed.py's training test, whose model ends in a Linear.)
"""
import pytest

from test_distributed import mpirun, needs_mpi

BUCKETS = """
from minires import autograd
minires.manual_seed(0)
m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                  nn.Flatten(), nn.Linear(3, 4))
names = {id(p): n for n, p in m.named_parameters()}
ddp = nn.DistributedDataParallel(m, bucket_cap_mb=1e-9)   # one parameter a bucket
seen = []
for p in m.parameters():   # registered after DDP's own hooks: each sees its gradient already in a bucket
    p.register_hook(lambda g, p=p: seen.append((names[id(p)], ddp._next)))
def step():
    seen.clear()
    x = minires.tensor(normal((4, 2, 5, 5), rank).astype(np.float32))
    ddp(x).sum().backward()
    return list(seen)
def bucket_names():
    return [names[id(b.params[0])] for b in ddp._buckets]
before = bucket_names()
first = step()
after = bucket_names()
second = step()
# a rank whose buffers differ gets rank 0's at the next forward
for b in m.buffers():
    b.data[...] = b.data + rank
ddp(minires.tensor(normal((4, 2, 5, 5), 9).astype(np.float32)))
buffers = distributed.all_gather_object([b.numpy().tolist() for b in m.buffers()])
report({"before": before, "after": after, "first": first, "second": second,
        "orders": distributed.all_gather_object(after), "buffers_agree": buffers[0] == buffers[-1]})
"""


@needs_mpi
def test_buckets_are_rebuilt_in_the_order_the_gradients_come(tmp_path):
    proc, result = mpirun(2, BUCKETS, tmp_path)
    assert proc.returncode == 0 and result is not None, proc.stderr[-3000:]
    arrival = [name for name, _ in result["first"]]
    assert result["before"][:2] == ["5.bias", "5.weight"], "the first guess: reverse parameter order"
    assert arrival[-1].startswith("5."), f"the Linear's gradients come last: {arrival}"
    assert result["after"] == arrival, "rebuilt in the order the gradients came"
    assert result["orders"][0] == result["orders"][1], "every rank has the same buckets"
    assert [n for n, _ in result["first"]][:1] == [n for n, _ in result["second"]][:1]
    # before the rebuild no bucket could start until the Linear's gradient came; after it, each starts at once
    assert all(started == 0 for _, started in result["first"][:-2]), result["first"]
    assert [started for _, started in result["second"]] == list(range(1, len(arrival) + 1)), result["second"]
    assert result["buffers_agree"]


@pytest.mark.parametrize("cap", [25])
def test_one_process_leaves_the_buckets_alone(cap):
    from minires import nn
    import minires
    import numpy as np
    m = nn.Sequential(nn.Linear(3, 2))
    ddp = nn.DistributedDataParallel(m, bucket_cap_mb=cap)
    ddp(minires.tensor(np.ones((2, 3), np.float32))).sum().backward()
    assert not ddp._rebuilt and m[0].weight.grad is not None
