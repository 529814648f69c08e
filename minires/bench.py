"""``minires bench``: time, throughput and peak memory of minires's hot paths per kernel backend, beside PyTorch.

Every (framework, workload, backend) runs in a fresh child process
(``python -m minires.bench --worker SPEC``) whose thread count is fixed
through the environment before NumPy, Numba or PyTorch load, so peak memory
is that workload's alone and every framework gets the same cores. Times are
medians after warm-up; GFLOP/s counts 2 FLOPs per multiply-add of the
convolutions and linear layers (``minires.viz.summary``'s count), three times
the forward's for a training step.

With ``device="cuda"`` the same workloads run on the GPU: minires on its GPU
kernel backends (CuPy arrays), PyTorch on CUDA with TF32 off (both compute in
full float32); every timed step ends in a device synchronisation, and peak
memory is what each framework's GPU allocator holds above the live memory
after setup (CuPy's memory pool; PyTorch's reserved bytes).
"""
import argparse
import datetime
import gc
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

# the resnet20 convolution shapes: (in channels, out channels, input side, stride), all 3x3 with padding 1
CONV_SHAPES = ((3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
QUICK_REPEAT, QUICK_WARMUP = 2, 1
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Workload:
    """One timed step: what it runs, its default batch (and ``--quick`` batch), warm-ups and repeats."""

    name: str
    kind: str           # "conv_fwd", "conv_bwd", "train" or "eval"
    batch: int
    quick_batch: int
    warmup: int
    repeat: int
    model: str = ""     # for train and eval
    image: int = 32     # for train and eval: the input side
    shape: tuple = ()   # for conv: (in channels, out channels, input side, stride)

    def flop(self, batch, macs_per_image):
        """FLOPs of one step: 2 per multiply-add; a backward costs two forwards (input and weight gradients)."""
        passes = {"conv_fwd": 1, "eval": 1, "conv_bwd": 2, "train": 3}[self.kind]
        return 2 * passes * macs_per_image * batch


def _conv_workloads():
    """Forward and backward of each resnet20 convolution shape, named e.g. conv_bwd_16to32_32px_s2."""
    out = []
    for kind in ("conv_fwd", "conv_bwd"):
        for cin, cout, side, stride in CONV_SHAPES:
            name = f"{kind}_{cin}to{cout}_{side}px" + (f"_s{stride}" if stride > 1 else "")
            out.append(Workload(name, kind, 128, 8, 2, 10, shape=(cin, cout, side, stride)))
    return out


WORKLOADS = {w.name: w for w in _conv_workloads() + [
    Workload("resnet20_train", "train", 128, 8, 1, 5, model="resnet20", image=32),
    Workload("resnet20_eval", "eval", 128, 8, 1, 5, model="resnet20", image=32),
    Workload("resnet50_train", "train", 16, 2, 1, 3, model="resnet50", image=224),
]}
# resnet50_train takes minutes per framework on two cores, so it runs only when asked for
DEFAULT_WORKLOADS = [name for name in WORKLOADS if name != "resnet50_train"]
GROUPS = {
    "conv": [n for n, w in WORKLOADS.items() if w.kind.startswith("conv")],
    "conv_fwd": [n for n, w in WORKLOADS.items() if w.kind == "conv_fwd"],
    "conv_bwd": [n for n, w in WORKLOADS.items() if w.kind == "conv_bwd"],
    "default": DEFAULT_WORKLOADS,
    "all": list(WORKLOADS),
}


def resolve_workloads(names):
    """The workloads named by a comma list (or list) of names and groups (conv, conv_fwd, conv_bwd, default, all)."""
    if names is None:
        names = DEFAULT_WORKLOADS
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    chosen = []
    for name in names:
        if name not in WORKLOADS and name not in GROUPS:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)} "
                             f"or a group: {', '.join(GROUPS)}")
        chosen += [n for n in GROUPS.get(name, [name]) if n not in chosen]
    if not chosen:
        raise ValueError("no workload given")
    return [WORKLOADS[n] for n in chosen]


def check_device(device):
    """``device`` ("cpu" or "cuda") when minires can run there, else a one-line error saying what is missing."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    from . import cuda
    if device == "cuda" and not cuda.is_available():
        raise RuntimeError("--device cuda needs CuPy and an NVIDIA GPU (pip install 'minires[cuda]'); "
                           "minires.cuda.is_available() is False here")
    return device


def resolve_backends(names, device="cpu"):
    """The kernel backends for ``device`` named by a comma list (or list); by default every one that loads here."""
    from . import kernels
    if names is None:
        return [n for n, (_, serves, _) in kernels.BACKENDS.items() if serves == device and kernels.available(n)]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    for name in names:
        if name in kernels.BACKENDS and kernels.BACKENDS[name][1] != device:
            raise ValueError(f"kernel backend {name!r} serves {kernels.BACKENDS[name][1]} arrays, not {device} "
                             f"ones; pick the device with --device")
        kernels.load(name)  # a one-line error for an unknown backend or a missing library
    if not names:
        raise ValueError("no backend given")
    return list(dict.fromkeys(names))


def macs_per_image(workload):
    """Multiply-adds of one image's forward pass: the conv formula, or ``minires.viz.summary`` over the model."""
    if workload.kind.startswith("conv"):
        cin, cout, side, stride = workload.shape
        out = (side + 2 - 3) // stride + 1
        return cout * out * out * cin * 9
    from . import models
    from .viz import summary
    model = models.get(workload.model)
    return summary(model, (1, 3, workload.image, workload.image), file=io.StringIO()).total_macs


# ---------------------------------------------------------------- the child process

def _memory_kib():
    """(current, peak) resident set size in KiB: /proc/self/status on Linux, else getrusage's peak for both."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak //= 1024 if sys.platform == "darwin" else 1  # bytes on macOS
        return peak, peak


def _release_free_memory():
    """Hand memory that malloc holds free back to the kernel (glibc only), so the baseline is live memory only.

    minires's numba backend asks glibc to keep freed memory for reuse; without
    this, arrays could reuse pages freed before the baseline (Numba's compiler
    frees plenty) and the step's peak would look smaller than it is.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak():
    """Lower the kernel's peak-RSS mark to the current RSS (Linux 4.0+); elsewhere the peak keeps the warm-ups."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _conv_case(workload, batch, rng, make, F, no_grad):
    """(setup, step) closures for a conv workload in either framework (both speak PyTorch's API).

    ``make(array, grad)`` turns a float32 NumPy array into the framework's tensor;
    ``F`` is its functional module and ``no_grad`` its context manager. Both
    frameworks draw the same numbers in the same order.
    """
    cin, cout, side, stride = workload.shape
    grad = workload.kind == "conv_bwd"
    x = make(rng.standard_normal((batch, cin, side, side), dtype=np.float32), grad)
    w = make(rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) / 3, grad)
    if not grad:
        def forward():
            with no_grad():
                F.conv2d(x, w, stride=stride, padding=1)
        return None, forward
    out = (side - 1) // stride + 1
    dy = make(rng.standard_normal((batch, cout, out, out), dtype=np.float32))
    graph = {}

    def setup():
        x.grad = w.grad = None
        graph["y"] = F.conv2d(x, w, stride=stride, padding=1)

    def backward():
        graph.pop("y").backward(dy)
    return setup, backward


def _minires_case(workload, batch, rng, device="cpu"):
    """(setup, step) closures for a minires workload on float32 data; ``setup`` (or None) runs untimed."""
    from . import functional as F
    from . import models, no_grad, optim, tensor
    from .backend import to_device

    def make(array, grad=False):
        return tensor(to_device(array, device), requires_grad=grad)

    if workload.kind.startswith("conv"):
        return _conv_case(workload, batch, rng, make, F, no_grad)

    model = models.get(workload.model).to(device)
    x = make(rng.standard_normal((batch, 3, workload.image, workload.image), dtype=np.float32))
    if workload.kind == "eval":
        model.eval()

        def evaluate():
            with no_grad():
                model(x)
        return None, evaluate
    labels = make(rng.integers(0, model.fc.out_features, batch))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step():
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return None, train_step


def _torch_models(torch):
    """PyTorch twins of minires's resnet20 (CIFAR layout, option-A shortcuts) and torchvision's resnet50."""
    nn, F = torch.nn, torch.nn.functional

    class BasicBlockA(nn.Module):
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + S(x)), S subsampling and zero-padding channels."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x[:, :, ::self.stride, ::self.stride]
            if self.extra:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
            return self.relu(out + shortcut)

    class Bottleneck(nn.Module):
        """torchvision's Bottleneck: 1x1, 3x3 (with the stride), 1x1 x4, projection where the shape changes."""

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != planes * 4:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes * 4))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    def stages(block, widths, counts, cin, expansion):
        layers = []
        for i, (planes, n) in enumerate(zip(widths, counts)):
            for j in range(n):
                layers.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * expansion
        return layers

    def resnet20():
        return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                             *stages(BasicBlockA, (16, 32, 64), (3, 3, 3), 16, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def resnet50():
        return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1), *stages(Bottleneck, (64, 128, 256, 512), (3, 4, 6, 3), 64, 4),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))

    return {"resnet20": resnet20, "resnet50": resnet50}


def _torch_case(workload, batch, rng, device="cpu"):
    """(setup, step) closures for the same workload in PyTorch."""
    import torch
    F = torch.nn.functional

    def make(array, grad=False):
        return torch.from_numpy(array).to(device).requires_grad_(grad)

    if workload.kind.startswith("conv"):
        return _conv_case(workload, batch, rng, make, F, torch.no_grad)

    model = _torch_models(torch)[workload.model]().to(device)
    x = make(rng.standard_normal((batch, 3, workload.image, workload.image), dtype=np.float32))
    if workload.kind == "eval":
        model.eval()

        def evaluate():
            with torch.no_grad():
                model(x)
        return None, evaluate
    labels = make(rng.integers(0, model[-1].out_features, batch))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step():
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return None, train_step


class _Memory:
    """Peak memory of the timed steps: ``start()`` after setup, ``warmed_up()`` after the warm-ups, then ``peak_kib()``.

    On a GPU the allocators keep what they once held, so the warm-ups (the
    same step) leave the peak where it is and ``warmed_up`` has nothing to do.
    """

    def warmed_up(self):
        pass


class _HostMemory(_Memory):
    """Peak resident memory above the baseline taken after setup (the CPU runs)."""

    def start(self):
        _release_free_memory()
        self.baseline, _ = _memory_kib()

    def warmed_up(self):
        _reset_peak()  # the warm-ups may compile (Numba) or fill caches: count the timed steps' peak

    def peak_kib(self):
        return max(_memory_kib()[1] - self.baseline, 0)


class _CupyMemory(_Memory):
    """GPU memory CuPy's pool holds above the live memory after setup; the pool keeps what it once held."""

    def __init__(self):
        import cupy
        self.pool = cupy.get_default_memory_pool()

    def start(self):
        self.pool.free_all_blocks()
        self.baseline = self.pool.used_bytes()

    def peak_kib(self):
        return max(self.pool.total_bytes() - self.baseline, 0) // 1024


class _TorchCudaMemory(_Memory):
    """GPU memory PyTorch's caching allocator reserved, at its peak, above the live memory after setup."""

    def __init__(self, torch):
        self.cuda = torch.cuda

    def start(self):
        self.cuda.empty_cache()
        self.cuda.reset_peak_memory_stats()
        self.baseline = self.cuda.memory_allocated()

    def peak_kib(self):
        return max(self.cuda.max_memory_reserved() - self.baseline, 0) // 1024


def _worker(spec):
    """Run one (framework, workload, backend) and print its times and memory as one JSON line."""
    workload = WORKLOADS[spec["workload"]]
    device = spec.get("device", "cpu")
    if spec["framework"] == "torch":
        import torch
        torch.set_num_threads(spec["threads"])
        build = _torch_case
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as minires computes
            torch.backends.cudnn.allow_tf32 = False
            sync, memory = torch.cuda.synchronize, _TorchCudaMemory(torch)
    else:
        from . import kernels
        kernels.use(spec["backend"])
        build = _minires_case
        if device == "cuda":
            import cupy
            sync, memory = cupy.cuda.Device().synchronize, _CupyMemory()
    if device == "cpu":
        sync, memory = (lambda: None), _HostMemory()
    # a one-image step first, so code loaded on first use (Numba's kernels, oneDNN's) sits in the baseline
    for prime in build(workload, 1, np.random.default_rng(1), device):
        if prime is not None:
            prime()
    del prime
    gc.collect()
    setup, step = build(workload, spec["batch"], np.random.default_rng(0), device)
    gc.collect()
    sync()
    memory.start()
    times = []
    for i in range(spec["warmup"] + spec["repeat"]):
        if i == spec["warmup"]:
            memory.warmed_up()
        if setup is not None:
            setup()
        sync()
        start = time.perf_counter()
        step()
        sync()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    print(json.dumps({"times_s": times, "peak_kib": memory.peak_kib()}))


# ---------------------------------------------------------------- the parent

def _run_child(spec):
    """Start a fresh interpreter with the thread variables set, run ``spec`` there, return its JSON answer."""
    env = dict(os.environ)
    env.pop("MINIRES_KERNELS", None)
    env.update({v: str(spec["threads"]) for v in THREAD_VARIABLES})
    done = subprocess.run([sys.executable, "-m", "minires.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"{spec['framework']} {spec['workload']} ({spec['backend']}) failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _record(workload, framework, backend, device, batch, threads, warmup, answer, flop, rounds=1):
    ms = 1e3 * statistics.median(answer["times_s"])
    return {"workload": workload.name, "framework": framework, "backend": backend, "device": device,
            "batch_size": batch,
            "threads": threads, "warmup": warmup, "rounds": rounds, "repeat": len(answer["times_s"]),
            "ms": ms, "times_ms": [1e3 * t for t in answer["times_s"]],
            "images_per_s": batch / (ms / 1e3), "flop": flop, "gflop_per_s": flop / (ms / 1e3) / 1e9,
            "peak_mib": answer["peak_kib"] / 1024, "time_ratio_vs_torch": None, "memory_ratio_vs_torch": None}


def torch_available():
    """True when PyTorch can be imported here (looked up without importing it)."""
    return importlib.util.find_spec("torch") is not None


def run_bench(workloads=None, backends=None, batch_size=None, threads=None, repeat=None, warmup=None,
              quick=False, torch=True, log=None, rounds=1, device="cpu"):
    """Measure each workload on each backend (and in PyTorch when installed and ``torch``); return the records.

    ``workloads`` and ``backends`` are comma lists or lists (default: ``DEFAULT_WORKLOADS``, every backend
    for ``device`` that loads); ``device`` is "cpu" or "cuda" (a GPU: see the module's docstring); ``log`` is
    a file that gets a line per measurement as it finishes. With ``rounds`` > 1 every framework of a workload
    is measured that many times, taking turns (a fresh process each time), and the times of all rounds are
    pooled: load that comes and goes then falls on every framework alike, so the ratios hold up better on a
    busy machine. The peak memory is the largest of the rounds'.
    """
    device = check_device(device)
    chosen, backends = resolve_workloads(workloads), resolve_backends(backends, device)
    for name, value, low in (("batch_size", batch_size, 1), ("threads", threads, 1), ("repeat", repeat, 1),
                             ("warmup", warmup, 0), ("rounds", rounds, 1)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    threads = threads or os.cpu_count() or 1
    frameworks = [("minires", b) for b in backends] + ([("torch", "torch")] if torch and torch_available() else [])
    records = []
    for workload in chosen:
        batch = batch_size or (workload.quick_batch if quick else workload.batch)
        spec = {"workload": workload.name, "batch": batch, "threads": threads, "device": device,
                "warmup": warmup if warmup is not None else (QUICK_WARMUP if quick else workload.warmup),
                "repeat": repeat if repeat is not None else (QUICK_REPEAT if quick else workload.repeat)}
        flop = workload.flop(batch, macs_per_image(workload))
        answers = {key: {"times_s": [], "peak_kib": 0} for key in frameworks}
        for _ in range(rounds):
            for framework, backend in frameworks:
                answer = _run_child(dict(spec, framework=framework, backend=backend))
                pooled = answers[framework, backend]
                pooled["times_s"] += answer["times_s"]
                pooled["peak_kib"] = max(pooled["peak_kib"], answer["peak_kib"])
                if log is not None:
                    ms, mib = 1e3 * statistics.median(answer["times_s"]), answer["peak_kib"] / 1024
                    print(f"bench: {workload.name:<26} {backend:<7} {ms:10.2f} ms  {mib:8.1f} MiB", file=log,
                          flush=True)
        group = [_record(workload, framework, backend, device, batch, threads, spec["warmup"],
                         answers[framework, backend], flop, rounds) for framework, backend in frameworks]
        reference = next((r for r in group if r["framework"] == "torch"), None)
        for r in group:
            if reference is not None and r is not reference:
                r["time_ratio_vs_torch"] = r["ms"] / reference["ms"]
                if reference["peak_mib"] > 0:
                    r["memory_ratio_vs_torch"] = r["peak_mib"] / reference["peak_mib"]
        records += group
    return records


def format_table(records):
    """The records as an aligned text table; ratios are minires/PyTorch (above 1: minires is slower or bigger)."""
    headers = ("workload", "backend", "batch", "ms", "img/s", "GFLOP/s", "peak MiB", "time/torch", "mem/torch")

    def ratio(value):
        return "--" if value is None else f"{value:.2f}"

    rows = [(r["workload"], r["backend"], str(r["batch_size"]), f"{r['ms']:.2f}", f"{r['images_per_s']:.1f}",
             f"{r['gflop_per_s']:.2f}", f"{r['peak_mib']:.1f}", ratio(r["time_ratio_vs_torch"]),
             ratio(r["memory_ratio_vs_torch"])) for r in records]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def describe_gpu():
    """The GPU minires runs on, with the CuPy and CUDA versions (asks CuPy; call only when a GPU is usable)."""
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    runtime = cupy.cuda.runtime.runtimeGetVersion()
    return f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, CuPy {cupy.__version__}, " \
           f"CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}"


def run_cli(args):
    """The ``minires bench`` command: run the benchmark and print the table (or ``--json``)."""
    started, load = datetime.datetime.now().astimezone(), os.getloadavg()[0]
    records = run_bench(args.workloads, args.backend, args.batch_size, args.threads, args.repeat, args.warmup,
                        args.quick, torch=not args.no_torch, log=sys.stderr, rounds=args.rounds, device=args.device)
    if args.json:
        print(json.dumps(records, indent=1))
        return
    first = records[0]
    rounds = f", {first['rounds']} rounds taking turns" if first["rounds"] > 1 else ""
    if args.device == "cuda":
        where = f"GPU {describe_gpu()}, PyTorch with TF32 off; host threads {first['threads']}"
        memory = "peak MiB = GPU memory the framework's allocator held above the live memory after setup"
    else:
        where = f"threads {first['threads']} (of {os.cpu_count()} CPUs)"
        memory = "peak MiB = peak RSS above the child's after-setup baseline"
    print(f"minires bench, {started:%Y-%m-%d %H:%M %Z}: {where}, load average {load:.2f} at the start and "
          f"{os.getloadavg()[0]:.2f} at the end; ms = median of the timed runs after warm-up{rounds}; {memory}")
    print(format_table(records))


def add_bench_parser(subparsers):
    """Register ``minires bench`` on the ``minires`` command's subparsers."""
    p = subparsers.add_parser("bench", help="time minires's kernels and models per backend, beside PyTorch",
                              description="Time conv2d on resnet20's shapes, a resnet20 training step and "
                                          "eval pass (resnet50 on request) per kernel backend, beside PyTorch, "
                                          "on the CPU or (--device cuda) a GPU; each measurement runs in a "
                                          "fresh process.")
    p.add_argument("--workloads", help=f"comma list of workloads or groups (default: the 'default' group); "
                                       f"workloads: {', '.join(WORKLOADS)}; groups: {', '.join(GROUPS)}")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where minires and PyTorch run: cpu (default) or cuda (a GPU, with the GPU kernel backends)")
    p.add_argument("--backend", help="comma list of kernel backends for the device (default: every one installed)")
    p.add_argument("--batch-size", type=int, help="one batch size for every workload (default: per workload)")
    p.add_argument("--threads", type=int, help="threads for every framework (default: os.cpu_count())")
    p.add_argument("--repeat", type=int, help="timed runs per measurement (default: per workload)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default: per workload)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every framework this many times, taking turns, and pool the times "
                        "(steadier ratios on a busy machine; default: 1)")
    p.add_argument("--quick", action="store_true",
                   help=f"small batches, {QUICK_WARMUP} warm-up and {QUICK_REPEAT} timed runs: a smoke test")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of the table")
    p.set_defaults(run=run_cli)
    return p


def _worker_main(argv=None):
    """``python -m minires.bench --worker SPEC``: the child side of one measurement."""
    parser = argparse.ArgumentParser(prog="python -m minires.bench",
                                     description="one measurement of `minires bench`, in its own process")
    parser.add_argument("--worker", required=True, help="the measurement, as JSON")
    _worker(json.loads(parser.parse_args(argv).worker))


if __name__ == "__main__":
    _worker_main()
