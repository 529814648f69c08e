"""``minires bench`` on the command line: its options, and the run that prints the table (or JSON)."""
import datetime
import json
import os
import sys

from .ranks import check_mpi, check_split, format_ranks_heading, format_ranks_table, parse_ranks, run_ranks, \
    train_workloads
from .report import format_heading, format_table
from .worker import ISAS
from .runner import DEVICES, check_counts, check_device, resolve_backends, run_bench
from .workloads import GROUPS, QUICK_REPEAT, QUICK_WARMUP, WORKLOADS, resolve_workloads


def check_cli(args):
    """The options' errors before anything is measured: the command line reports them as usage errors."""
    if args.ranks is not None and args.device != "cpu":
        raise ValueError(f"--ranks measures ranks on the CPU; --device {args.device} is not supported with it")
    if args.isa != "native" and (args.ranks is not None or args.device != "cpu"):
        raise ValueError(f"--isa {args.isa} keeps the CPU's code to that instruction set in the single-process "
                         "bench; it does not apply with --ranks or --device cuda")
    check_device(args.device)
    resolve_backends(args.backend, args.device)
    check_counts(vars(args), spell=lambda name: "--" + name.replace("_", "-"))
    if args.ranks is None:
        resolve_workloads(args.workloads)
        return
    counts = parse_ranks(args.ranks)
    check_split(train_workloads(args.workloads), counts, args.batch_size, args.quick)
    check_mpi()


def run_cli(args):
    """The ``minires bench`` command: run the benchmark and print the table (or ``--json``)."""
    started, load = datetime.datetime.now().astimezone(), os.getloadavg()[0]
    if args.ranks is not None:
        records = run_ranks(args.ranks, args.workloads, args.backend, args.batch_size, args.threads, args.repeat,
                            args.warmup, args.quick, log=sys.stderr, rounds=args.rounds)
        if args.json:
            print(json.dumps(records, indent=1))
            return
        print(format_ranks_heading(records, started, load))
        print(format_ranks_table(records))
        return
    records = run_bench(args.workloads, args.backend, args.batch_size, args.threads, args.repeat, args.warmup,
                        args.quick, torch=not args.no_torch, log=sys.stderr, rounds=args.rounds, device=args.device,
                        isa=args.isa)
    if args.json:
        print(json.dumps(records, indent=1))
        return
    print(format_heading(records, args.device, started, load))
    print(format_table(records))


def add_bench_parser(subparsers):
    """Register ``minires bench`` on the ``minires`` command's subparsers."""
    p = subparsers.add_parser("bench", help="time minires's kernels and models per backend, beside PyTorch",
                              description="Time conv2d on resnet20's shapes, a resnet20 training step and "
                                          "eval pass (resnet50 on request) per kernel backend, beside PyTorch, "
                                          "on the CPU or (--device cuda) a GPU; each measurement runs in a "
                                          "fresh process; with --ranks, data-parallel training on MPI "
                                          "ranks.")
    p.add_argument("--workloads", help=f"comma list of workloads or groups (default: the 'default' group); "
                                       f"workloads: {', '.join(WORKLOADS)}; groups: {', '.join(GROUPS)}")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where minires and PyTorch run: cpu (default) or cuda (a GPU, with the GPU kernel backends)")
    p.add_argument("--backend", help="comma list of kernel backends for the device (default: every one installed)")
    p.add_argument("--batch-size", type=int, help="one batch size for every workload (default: per workload)")
    p.add_argument("--threads", type=int, help="threads for every framework (default: os.cpu_count(); "
                                               "with --ranks: per rank, default 1)")
    p.add_argument("--ranks", help="comma list of MPI rank counts, e.g. 1,2: time data-parallel training "
                                   "(nn.DistributedDataParallel, launched with mpiexec) on each, with --batch-size "
                                   "the global batch; reports throughput, speed-up, scaling efficiency and the "
                                   "share of the step spent communicating (needs pip install -e '.[mpi]')")
    p.add_argument("--repeat", type=int, help="timed runs per measurement (default: per workload)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default: per workload)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every framework this many times, taking turns, and pool the times "
                        "(steadier ratios on a busy machine; default: 1)")
    p.add_argument("--quick", action="store_true",
                   help=f"small batches, {QUICK_WARMUP} warm-up and {QUICK_REPEAT} timed runs: a smoke test")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--isa", choices=ISAS, default="native",
                   help="native (default): every framework uses what this CPU has; avx2: keep OpenBLAS, Numba and "
                        "PyTorch to AVX2 code (no AVX-512), an AVX2 machine's kernels on this CPU")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of the table")
    p.set_defaults(check=check_cli, run=run_cli)
    return p
