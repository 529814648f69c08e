"""DistributedDataParallel: one model per rank, gradients averaged over the ranks during backward.

As PyTorch's ``torch.nn.parallel.DistributedDataParallel``: at the start every
rank takes rank 0's parameters and buffers; in backward, each parameter's
gradient is copied into a bucket as soon as the engine has it (a tensor
hook), and a full bucket starts its all-reduce at once, while the backward
goes on through the earlier layers; when the backward has finished (an
engine callback) the buckets are waited for and every ``.grad`` holds the
mean over the ranks. The buckets start in index order, so every rank issues
the same collectives in the same order. At first they hold the parameters in
reverse order; the first backward shows the order the engine really produces
the gradients in (a layer's weights can arrive long after the layers below
it), and the buckets are then rebuilt once in rank 0's order of arrival, as
PyTorch does, so that a bucket fills, and starts, while backward goes on.
"""
import numpy as np

from .. import distributed
from ..autograd import queue_callback
from ..backend import array_module
from ..tensor import Tensor
from .module import Module


class _Bucket:
    def __init__(self, params):
        self.params = params
        xp = array_module(params[0].data)
        self.buffer = xp.zeros(sum(p.data.size for p in params), dtype=params[0].data.dtype)
        offsets = np.cumsum([0] + [p.data.size for p in params])
        self.slices = {id(p): slice(int(a), int(b)) for p, a, b in zip(params, offsets[:-1], offsets[1:])}
        self.ready = set()
        self.work = None


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training: its gradients are averaged over the ranks after backward.

    ``bucket_cap_mb``: the size of the gradient buckets (a few large
    all-reduces cost less than many small ones). ``broadcast_buffers``: in
    training, rank 0's buffers (batch norm's running statistics) are sent to
    every rank before each forward, as PyTorch does.
    """

    def __init__(self, module, bucket_cap_mb=25, broadcast_buffers=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a Module, got {type(module).__name__}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        params = [p for p in module.parameters() if p.requires_grad]
        distributed.check_same("the model's parameters (names, shapes, dtypes)",
                               [(n, list(p.shape), str(p.data.dtype)) for n, p in module.named_parameters()])
        for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
            distributed.broadcast(t.data, src=0)
        self._params, self._limit = params, bucket_cap_mb * 2 ** 20
        self._build_buckets(list(reversed(params)))  # a guess at the order backward produces the gradients in
        self._arrived = []     # the parameters in the order their gradients came, until the buckets are rebuilt
        self._rebuilt = False
        self._before = {}      # id(param) -> its .grad before this backward (gradients accumulate)
        self._armed = False    # a backward is under way and its callback is queued
        self._next = 0         # the next bucket to start: buckets start in index order on every rank
        self._done = 0         # buckets before it have finished their reductions
        for p in params:
            p.register_hook(self._hook(p))

    def _build_buckets(self, order):
        """Cut ``order`` (parameters, first-needed first) into buckets of at most ``bucket_cap_mb``, one dtype each."""
        self._buckets, group, size = [], [], 0
        for p in order:
            if group and (size + p.data.nbytes > self._limit or p.data.dtype != group[0].data.dtype):
                self._buckets.append(_Bucket(group))
                group, size = [], 0
            group.append(p)
            size += p.data.nbytes
        if group:
            self._buckets.append(_Bucket(group))
        self._bucket_of = {id(p): b for b in self._buckets for p in b.params}

    def forward(self, *args, **kwargs):
        if self.training and self.broadcast_buffers and distributed.world_size() > 1:
            self._broadcast_buffers()
        return self.module(*args, **kwargs)

    def _broadcast_buffers(self):
        """Rank 0's buffers on every rank: one broadcast per dtype (packed), not one per buffer."""
        groups = {}
        for b in self.module.buffers():
            if b is not None:
                groups.setdefault((type(b.data), b.data.dtype), []).append(b)
        for buffers in groups.values():
            xp = array_module(buffers[0].data)
            packed = xp.concatenate([b.data.reshape(-1) for b in buffers])
            distributed.broadcast(packed, src=0)
            offset = 0
            for b in buffers:
                b.data[...] = packed[offset:offset + b.data.size].reshape(b.data.shape)
                offset += b.data.size

    def _hook(self, p):
        def ready(grad):
            if distributed.world_size() == 1:
                return None
            if not self._armed:
                self._armed, self._next, self._done = True, 0, 0
                self._before = {}
                queue_callback(self._finish)
            if not self._rebuilt:
                self._arrived.append(p)
            bucket = self._bucket_of[id(p)]
            self._before[id(p)] = p.grad
            bucket.buffer[bucket.slices[id(p)]] = grad.data.reshape(-1)
            bucket.ready.add(id(p))
            self._start_ready()
            return None
        return ready

    def _start_ready(self):
        while self._next < len(self._buckets):
            bucket = self._buckets[self._next]
            if len(bucket.ready) < len(bucket.params):
                break
            bucket.work = distributed.all_reduce_async(bucket.buffer, op="mean")
            self._next += 1
        # MPI progresses non-blocking reductions only inside MPI calls: one test of the oldest reduction still
        # under way progresses them all (a test per started bucket at every hook cost more than it gave)
        while self._done < self._next and self._buckets[self._done].work.test():
            self._done += 1

    def _finish(self):
        """After backward: start what is left (parameters that got no gradient count as zero), wait, write .grad."""
        for bucket in self._buckets:
            for p in bucket.params:
                if id(p) not in bucket.ready:
                    bucket.buffer[bucket.slices[id(p)]] = 0
                    bucket.ready.add(id(p))
        self._start_ready()
        for bucket in self._buckets:
            bucket.work.wait()
            for p in bucket.params:
                mean = bucket.buffer[bucket.slices[id(p)]].reshape(p.data.shape).copy()
                before = self._before.get(id(p), p.grad)
                p.grad = Tensor(mean if before is None else before.data + mean)
            bucket.ready.clear()
            bucket.work = None
        self._armed = False
        if not self._rebuilt:
            self._rebuild_buckets()

    def _rebuild_buckets(self):
        """Once, after the first backward: buckets in the order the gradients came on rank 0 (every rank alike)."""
        index = {id(p): i for i, p in enumerate(self._params)}
        arrived = list(dict.fromkeys(index[id(p)] for p in self._arrived))
        came = set(arrived)
        arrived += [i for i in reversed(range(len(self._params))) if i not in came]  # no gradient yet
        order = distributed.broadcast_object(arrived, src=0)
        self._rebuilt, self._arrived = True, []
        if order != list(reversed(range(len(self._params)))):
            self._build_buckets([self._params[i] for i in order])

    def state_dict(self, *args, **kwargs):
        """The wrapped module's state (no ``module.`` prefix), so checkpoints load with or without the wrapper."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)
