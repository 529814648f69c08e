"""minires.distributed, nn.SyncBatchNorm and nn.parallel.DistributedDataParallel, on real ranks.

Multi-rank checks launch ``mpiexec -n 2`` or ``-n 4`` on a script written
by the test, with a timeout, so a hang fails the test instead of the run.
Each rank checks its own part and exits non-zero on a mismatch; rank 0
prints a JSON line the test reads. The oracles are independent: batch norm
in one process over the concatenated batch (float64), central finite
differences of a loss summed over all ranks, one process training on the
global batch. Without mpi4py or ``mpiexec`` these tests skip; in one process
the library is a no-op, checked without MPI.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import minires
from minires import distributed, nn
from minires.data import ArrayDataset, DataLoader, DistributedSampler

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not distributed.is_available(),
                               reason="needs mpi4py and mpiexec (pip install 'minires[mpi]')")

PRELUDE = """
import json, sys
import numpy as np
import minires
from minires import distributed, nn
import minires.functional as F
distributed.init()
rank, size = distributed.rank(), distributed.world_size()
def normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)
def report(obj):
    if rank == 0:
        print("RESULT " + json.dumps(obj), flush=True)
"""


def mpirun(n, body, tmp_path, timeout=120, env=None):
    """Run ``body`` (after PRELUDE) on ``n`` ranks; returns (CompletedProcess, rank 0's RESULT or None)."""
    script = tmp_path / f"ranks{n}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    child_env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                     **(env or {}))
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=child_env, cwd=tmp_path)
    results = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return proc, (json.loads(results[0]) if results else None)


# ---------------------------------------------------------------- one process: a no-op

def test_one_process_is_a_world_of_one():
    assert distributed.init() == 1 and distributed.rank() == 0 and distributed.world_size() == 1
    a = np.arange(4.0)
    assert distributed.all_reduce(a, op="mean") is a and np.array_equal(a, np.arange(4.0))
    t = minires.tensor(np.ones(3))
    assert distributed.broadcast(t) is t and distributed.all_gather_object({"x": 1}) == [{"x": 1}]
    distributed.barrier()
    with pytest.raises(ValueError, match="op must be one of 'sum', 'mean', got 'max'"):
        distributed.all_reduce(a, op="max")
    with pytest.raises(TypeError, match="expected a NumPy or CuPy array or a Tensor, got list"):
        distributed.all_reduce([1, 2])


def test_launched_without_mpi4py_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from minires import distributed\n"
            "try:\n    distributed.init()\nexcept RuntimeError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PMI_SIZE="2", PMI_RANK="0"))
    assert "one of 2 ranks" in proc.stdout and "pip install 'minires[mpi]'" in proc.stdout, proc.stderr


# ---------------------------------------------------------------- the sampler

@pytest.mark.parametrize("n, replicas, drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (5, 2, False)])
def test_sampler_shards_are_disjoint_cover_and_repeat_with_the_seed(n, replicas, drop_last):
    data = ArrayDataset(np.zeros((n, 1, 2, 2), np.float32), np.zeros(n, np.int64))
    shards = [list(DistributedSampler(data, replicas, r, seed=7, drop_last=drop_last)) for r in range(replicas)]
    sizes = {len(s) for s in shards}
    assert len(sizes) == 1, f"uneven shards {shards}"
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // replicas) * replicas
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // replicas) * replicas  # padded by repeats
    again = [list(DistributedSampler(data, replicas, r, seed=7, drop_last=drop_last)) for r in range(replicas)]
    assert again == shards
    other = DistributedSampler(data, replicas, 0, seed=7, drop_last=drop_last)
    other.set_epoch(1)
    assert n < 4 or list(other) != shards[0]  # a new epoch, a new order


def test_sampler_batches_together_make_the_global_batches():
    n, replicas, per_rank = 24, 3, 2
    data = ArrayDataset(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.arange(n))
    order = np.random.default_rng(5).permutation(n)
    loaders = [DataLoader(data, per_rank, sampler=DistributedSampler(data, replicas, r, seed=5)) for r in range(3)]
    for k, batches in enumerate(zip(*loaders)):
        together = sorted(int(v) for _, labels in batches for v in labels.numpy())
        assert together == sorted(order[k * per_rank * replicas:(k + 1) * per_rank * replicas].tolist())


def test_sampler_and_shuffle_exclude_each_other():
    data = ArrayDataset(np.zeros((4, 1, 1, 1), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="excludes shuffle=True"):
        DataLoader(data, 2, shuffle=True, sampler=DistributedSampler(data, 2, 0))
    with pytest.raises(ValueError, match="rank 2 is not among 2 replicas"):
        DistributedSampler(data, 2, 2)


# ---------------------------------------------------------------- collectives on real ranks

@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_all_reduce_broadcast_and_gather_on_real_ranks(n, tmp_path):
    proc, result = mpirun(n, """
        a = np.full((2, 3), float(rank + 1))
        distributed.all_reduce(a)
        m = minires.tensor(np.full(4, float(rank), dtype=np.float32))
        distributed.all_reduce(m, op="mean")
        b = np.full(5, -1.0) if rank else np.arange(5.0)
        distributed.broadcast(b, src=0)
        w = distributed.all_reduce_async(np.full(3, float(rank)), op="sum").wait()
        gathered = distributed.all_gather_object(rank * 10)
        checks = [np.all(a == size * (size + 1) / 2), np.all(m.numpy() == (size - 1) / 2),
                  np.array_equal(b, np.arange(5.0)), np.all(w == size * (size - 1) / 2),
                  gathered == [10 * r for r in range(size)]]
        assert all(checks), (rank, checks)
        distributed.barrier()
        report({"size": size, "ok": True})
    """, tmp_path)
    assert proc.returncode == 0 and result == {"size": n, "ok": True}, proc.stderr[-3000:]


# ---------------------------------------------------------------- synchronised batch norm

SYNC_BN = """
from minires.distributed import SyncBatchNormFunction
sizes = {sizes}
c = 3
xs = [normal((b, c, 3, 2), 10 + r) for r, b in enumerate(sizes)]
rs = [normal((b, c, 3, 2), 20 + r) for r, b in enumerate(sizes)]
w, bias = normal(c, 1) + 2.0, normal(c, 2)
# the oracle: one process, batch norm over the concatenated batch
X = minires.tensor(np.concatenate(xs), requires_grad=True)
W, B = minires.tensor(w, requires_grad=True), minires.tensor(bias, requires_grad=True)
rm, rv = minires.tensor(np.zeros(c)), minires.tensor(np.ones(c))
Y = F.batch_norm(X, rm, rv, W, B, training=True, momentum=0.1)
(Y * minires.tensor(np.concatenate(rs))).sum().backward()
start = sum(sizes[:rank])
mine = slice(start, start + sizes[rank])
# this rank's part, synchronised
layer = nn.SyncBatchNorm(c)
layer.weight.data, layer.bias.data = w.copy(), bias.copy()
layer.running_mean.data, layer.running_var.data = np.zeros(c), np.ones(c)
x = minires.tensor(xs[rank], requires_grad=True)
y = layer(x)
(y * minires.tensor(rs[rank])).sum().backward()
errs = {{
    "y": float(np.abs(y.numpy() - Y.numpy()[mine]).max()) if sizes[rank] else 0.0,
    "dx": float(np.abs(x.grad.numpy() - X.grad.numpy()[mine]).max()) if sizes[rank] else 0.0,
    "running_mean": float(np.abs(layer.running_mean.numpy() - rm.numpy()).max()),
    "running_var": float(np.abs(layer.running_var.numpy() - rv.numpy()).max()),
}}
# weight and bias: this rank's sums; summed over the ranks they are the one-process gradients
dw = layer.weight.grad.numpy().copy(); distributed.all_reduce(dw)
db = layer.bias.grad.numpy().copy(); distributed.all_reduce(db)
errs["dweight"] = float(np.abs(dw - W.grad.numpy()).max())
errs["dbias"] = float(np.abs(db - B.grad.numpy()).max())
worst = distributed.all_gather_object(errs)
report({{k: max(e[k] for e in worst) for k in errs}})
"""


@needs_mpi
@pytest.mark.parametrize("n, sizes", [(2, [3, 3]), (4, [2, 3, 1, 0])], ids=["2-even", "4-uneven-and-empty"])
def test_sync_batch_norm_is_batch_norm_over_the_concatenated_batch(n, sizes, tmp_path):
    proc, errs = mpirun(n, SYNC_BN.format(sizes=sizes), tmp_path)
    assert proc.returncode == 0 and errs is not None, proc.stderr[-3000:]
    assert max(errs.values()) < 1e-10, errs


@needs_mpi
def test_sync_batch_norm_matches_finite_differences_of_a_loss_over_all_ranks(tmp_path):
    proc, result = mpirun(2, """
        from minires.distributed import SyncBatchNormFunction
        c, eps = 2, 1e-6
        x = normal((2, c, 2, 2), 30 + rank); r = normal(x.shape, 40 + rank)
        w, b = normal(c, 3) + 1.5, normal(c, 4)
        def loss():  # summed over every rank: each evaluation is a collective
            y = SyncBatchNormFunction.apply(minires.tensor(x), minires.tensor(w), minires.tensor(b),
                                            running_mean=None, running_var=None, momentum=0.1, eps=1e-5)
            total = np.array([float(np.sum(y.numpy() * r))])
            distributed.all_reduce(total)
            return total[0]
        xt = minires.tensor(x.copy(), requires_grad=True)
        y = SyncBatchNormFunction.apply(xt, minires.tensor(w), minires.tensor(b), running_mean=None,
                                        running_var=None, momentum=0.1, eps=1e-5)
        (y * minires.tensor(r)).sum().backward()
        worst = 0.0
        for owner in range(size):  # every rank perturbs the owner's elements in turn, all evaluate
            for idx in np.ndindex(x.shape):
                if rank == owner:
                    old = x[idx]; x[idx] = old + eps
                up = loss()
                if rank == owner:
                    x[idx] = old - eps
                down = loss()
                if rank == owner:
                    x[idx] = old
                    worst = max(worst, abs((up - down) / (2 * eps) - xt.grad.numpy()[idx]))
        report({"worst": max(distributed.all_gather_object(worst))})
    """, tmp_path)
    assert proc.returncode == 0 and result is not None, proc.stderr[-3000:]
    assert result["worst"] < 1e-6, result


# ---------------------------------------------------------------- data-parallel training

DDP_TRAINING = """
from minires import optim
rng = np.random.default_rng(0)
N_GLOBAL, STEPS = 8, 4
images = rng.standard_normal((STEPS * N_GLOBAL, 2, 6, 6))
labels = rng.integers(0, 3, STEPS * N_GLOBAL)
def model():
    minires.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 3))
    for p in m.parameters():
        p.data = p.data.astype(np.float64)
    for b in m.buffers():
        if b.data.dtype == np.float32:
            b.data = b.data.astype(np.float64)
    return m
def train(m, part, shards):
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for s in range(STEPS):
        xb, yb = images[s * N_GLOBAL:(s + 1) * N_GLOBAL][part], labels[s * N_GLOBAL:(s + 1) * N_GLOBAL][part]
        out = m(minires.tensor(xb))
        # the local sum scaled so that the mean over the ranks is the mean over the global batch
        loss = F.cross_entropy(out, minires.tensor(yb), reduction="sum") * (shards / N_GLOBAL)
        opt.zero_grad(); loss.backward(); opt.step()
    return m
one = train(model(), slice(None), 1)  # the oracle: one process, the whole batch
per = N_GLOBAL // size
ddp = nn.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model()), bucket_cap_mb=0.0005)
train(ddp, slice(rank * per, (rank + 1) * per), size)
worst = max(float(np.abs(a.numpy() - b.numpy()).max())
            for a, b in zip(one.state_dict().values(), ddp.module.state_dict().values()))
same = distributed.all_gather_object([float(p.numpy().sum()) for p in ddp.module.parameters()])
report({"worst": max(distributed.all_gather_object(worst)), "buckets": len(ddp._buckets),
        "ranks_agree": all(s == same[0] for s in same)})
"""


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_ranks_with_sync_bn_take_the_steps_of_one_process(n, tmp_path):
    proc, result = mpirun(n, DDP_TRAINING, tmp_path, timeout=300)
    assert proc.returncode == 0 and result is not None, proc.stderr[-3000:]
    assert result["ranks_agree"] and result["buckets"] > 1, result
    assert result["worst"] < 1e-10, result


@needs_mpi
def test_ddp_starts_every_rank_from_rank_zeros_weights_and_refuses_a_different_model(tmp_path):
    proc, result = mpirun(2, """
        minires.manual_seed(100 + rank)  # different weights on each rank before wrapping
        m = nn.Sequential(nn.Linear(3, 2))
        before = m[0].weight.numpy().copy()
        ddp = nn.DistributedDataParallel(m)
        sums = distributed.all_gather_object(float(m[0].weight.numpy().sum()))
        other = nn.Sequential(nn.Linear(3, 2 + rank))
        try:
            nn.DistributedDataParallel(other)
            refused = ""
        except ValueError as exc:
            refused = str(exc)
        report({"equal": sums[0] == sums[1], "refused": refused})
    """, tmp_path)
    assert proc.returncode == 0 and result is not None, proc.stderr[-3000:]
    assert result["equal"] and "the ranks disagree on the model's parameters" in result["refused"]
    assert "rank(s) 1 differ from rank 0" in result["refused"]


@needs_mpi
def test_a_failure_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    started = time.perf_counter()
    proc, _ = mpirun(4, """
        import time
        if rank == 2:
            distributed.abort("the data on this rank is broken")
        time.sleep(60)   # the other ranks would wait here (or in a collective) for a minute
        distributed.barrier()
    """, tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "rank 2: the data on this rank is broken" in proc.stderr + proc.stdout
    assert time.perf_counter() - started < 30, "the other ranks were not ended promptly"


def _gpu_count():
    from minires.backend import cupy_or_none
    cp = cupy_or_none()
    if cp is None:
        return 0
    try:
        return cp.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@needs_mpi
@pytest.mark.skipif(_gpu_count() < 2, reason="needs two NVIDIA GPUs and CuPy (pip install -e '.[cuda,mpi]')")
def test_cupy_arrays_are_reduced_across_two_gpus(tmp_path):
    proc, result = mpirun(2, """
        import cupy as cp
        a = cp.full((1000,), float(rank + 1), dtype=cp.float32)
        distributed.all_reduce(a, op="mean")
        w = minires.tensor(cp.full(3, float(rank), dtype=cp.float64)).data
        distributed.all_reduce(w)
        report({"device": [int(cp.cuda.Device().id) for _ in [0]][0], "mean": float(a.get()[0]),
                "sum": float(w.get()[0]), "devices": distributed.all_gather_object(int(cp.cuda.Device().id))})
    """, tmp_path)
    assert proc.returncode == 0 and result is not None, proc.stderr[-3000:]
    assert result["mean"] == 1.5 and result["sum"] == 1.0 and result["devices"] == [0, 1], result
