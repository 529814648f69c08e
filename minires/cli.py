"""The ``minires`` command: ``minires train``, ``minires summary resnet50``, ``minires convert in.pth out.npz`` ...

Every verb checks its options before it does any work. Exit status: 0 done; 2 a usage
error or an input minires cannot use (an option out of range or in conflict with another,
a file named on the command line that is missing, damaged or of the wrong kind: every
``ValueError``); 1 a failure while working (a download, a full disk, a run that diverged,
a missing library) or a bug; 130 interrupted. An error is printed as its whole message; an
unexpected exception (a bug) as one line, with its traceback only on request: ``--debug``
or ``MINIRES_DEBUG=1``.

``mpiexec -n N minires train ...`` trains data-parallel over N ranks and ``mpiexec -n N minires
experiment ...`` spreads its runs over them. Rank 0 alone prints. An error that every rank meets
(an option, a checkpoint, a diverged loss) is printed once and every rank exits with its status; an
error on one rank alone ends every rank at once through MPI (``distributed.abort``), with that
rank's message, so no rank is left waiting for the others.
"""
import argparse
import contextlib
import io
import os
import sys
import traceback

USAGE, FAILURE, INTERRUPTED = 2, 1, 130
PARALLEL = ("train", "experiment")  # the verbs that run over the ranks of mpiexec
# what the library raises with a message meant for the user; anything else is a bug
USER_ERRORS = (ValueError, OSError, RuntimeError, ImportError, MemoryError)


class UsageError(ValueError):
    """The command line asks for something impossible (exit status 2)."""


def _at_least(args, low, *names):
    """Refuse an integer option below ``low``, naming its flag."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def _check_summary(args):
    from . import models
    _at_least(args, 1, "input_size", "in_channels", "num_classes")
    _at_least(args, 0, "depth")
    kwargs = {k: getattr(args, k) for k in ("num_classes", "in_channels") if getattr(args, k) is not None}
    args.built = models.get(args.model, **kwargs)  # an unknown name or a bad size is a usage error


def _summary(args):
    from .viz import summary
    model, size = args.built, args.input_size
    if size is None:
        size = 32 if model.__class__.__name__.startswith(("Cifar", "PreActCifar", "Dense", "Highway")) else 224
    channels = 3 if args.in_channels is None else args.in_channels
    summary(model, (1, channels, size, size), depth=args.depth)


def _train_options(args):
    """The options given on the command line (those left out keep the run's defaults, or a resumed run's)."""
    options = {k: v for k, v in {
        "model": args.model, "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay, "seed": args.seed,
        "kernels": args.kernels, "device": args.device, "out": args.out, "data_root": args.data_root,
        "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
        "nesterov": args.nesterov}.items() if v is not None}
    if args.no_augment:
        options["augment"] = False
    if args.sync_bn is not None:
        options["sync_bn"] = args.sync_bn
    return options


def _check_train(args):
    from .train import TrainConfig, checkpoint_path
    if args.resume:
        checkpoint_path(args.resume)  # its options are checked against the run's when it is read
    else:
        args.config = TrainConfig(**_train_options(args))


def _train(args):
    from .train import train
    if args.resume:
        run = train(resume=args.resume, progress=not args.quiet, **_train_options(args))
    else:
        run = train(args.config, progress=not args.quiet)
    last = run.history[-1]
    if run.rank == 0:
        print(f"done: test accuracy {100 * last['test_acc']:.2f}% after {last['epoch']} epochs; "
              f"run folder: {run.folder}")


def _check_eval(args):
    from .data import dataset_info
    from .train import checkpoint_path
    from .train.options import cpu_kernels
    if args.kernels is not None and args.kernels not in cpu_kernels():
        raise UsageError(f"--kernels {args.kernels!r}: minires eval runs on the CPU; choose one of "
                         f"{', '.join(cpu_kernels())}")
    checkpoint_path(args.checkpoint)
    if args.data is not None:
        try:
            dataset_info(args.data)
        except ValueError as exc:
            raise UsageError(f"--data: {exc}") from None


def _eval(args):
    from .train import checkpoint_report
    r = checkpoint_report(args.checkpoint, data=args.data, data_root=args.data_root, kernels=args.kernels)
    print(f"{r['data']} test set (kernels {r['kernels']}, {r['kernels_why']}; the run trained with "
          f"{r['trained_kernels']}): loss {r['loss']:.4f}, accuracy {100 * r['accuracy']:.2f}%")


def _check_experiment(args):
    try:
        args.depth_list = tuple(int(d) for d in args.depths.split(","))
    except ValueError:
        raise UsageError(f"--depths must be comma-separated whole numbers such as 8,20,56, got {args.depths!r}") \
            from None


def _experiment(args):
    from .experiments import degradation
    degradation(data=args.data, depths=args.depth_list, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, warmup_epochs=args.warmup_epochs, seed=args.seed, out=args.out,
                data_root=args.data_root, progress=not args.quiet)


def _models(args):
    from . import models
    print("\n".join(models.list()))


def _check_convert(args):
    if not os.path.isfile(args.source):
        raise UsageError(f"no such file: {args.source}")
    folder = os.path.dirname(os.path.abspath(args.target))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {args.target}: the folder {folder} does not exist")
    if os.path.abspath(args.target) == os.path.abspath(args.source):
        raise UsageError(f"the target {args.target} is the source itself; name another file")


def _convert(args):
    from .serialization import convert_torch_checkpoint
    count = convert_torch_checkpoint(args.source, args.target)
    print(f"wrote {count} arrays to {args.target}")


def _mirror_list(text):
    """The value of --mirror: comma-separated base URLs or folders (checked here, a usage error if wrong)."""
    from .data.download import parse_mirrors
    try:
        return parse_mirrors(text, "--mirror")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--mirror: ")) from None


def _add_mirror_option(p):
    """--mirror on a verb that reads data: while it runs, its mirrors replace $MINIRES_DATA_MIRROR's."""
    p.add_argument("--mirror", metavar="URLS", type=_mirror_list,
                   help="data mirrors tried in order before the official hosts, with the same checksum checks: "
                        "comma-separated base URLs (http, https, file) or folders laid out like the cache "
                        "(<base>/<dataset>/<file>); replaces $MINIRES_DATA_MIRROR")
    run = p.get_default("run")

    def run_with_mirrors(args):
        from .data.download import using_mirrors
        with using_mirrors(args.mirror):
            return run(args)
    p.set_defaults(run=run_with_mirrors)


def build_parser():
    parser = argparse.ArgumentParser(prog="minires", description="minires: residual networks from scratch",
                                     epilog="Exit status: 0 done, 1 failed, 2 usage error or unusable input. "
                                            "--debug (anywhere on the line) or MINIRES_DEBUG=1 shows the traceback "
                                            "of an error.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a residual network (default: resnet20 on the bundled digits); "
                                     "under `mpiexec -n N` data-parallel over N ranks")
    p.add_argument("--model", help="model name (default resnet20; see `minires models`)")
    p.add_argument("--data", help="digits (bundled, default), mnist, fashion-mnist or cifar10")
    p.add_argument("--data-root", help="folder holding the dataset's files (default: the cache, $MINIRES_DATA)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default on; --no-nesterov is the paper's plain momentum)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["cosine", "multistep"])
    p.add_argument("--warmup-epochs", type=int, help="epochs at lr/10 first, as the paper did for ResNet-110")
    p.add_argument("--no-augment", action="store_true", help="no random crops or flips")
    p.add_argument("--seed", type=int)
    p.add_argument("--kernels", help="kernel backend: auto (default: numba when it is installed and loads, else "
                                     "numpy; numpy in a student copy), numpy (the readable reference), numba; on a GPU "
                                     "auto is cupy when it is available, else numba-cuda. MINIRES_KERNELS sets the "
                                     "default; the header and config.json say which ran")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--out", help="parent folder of the run folder (default ./runs)")
    p.add_argument("--resume", help="a run folder or checkpoint.npz to continue, with the same or another number "
                                    "of ranks; of the other options only --epochs (as many or more), --kernels, "
                                    "--device, --data-root and --sync-bn may change")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under `mpiexec -n N minires train`: batch norm over the global batch of all ranks "
                        "(nn.SyncBatchNorm), so N ranks take the steps of one process; --batch-size is the "
                        "global batch, split evenly. Needs mpi4py (pip install 'minires[mpi]') and an MPI "
                        "launcher; without it (the default) each rank normalises its own part, as PyTorch's "
                        "DDP does")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(check=_check_train, run=_train)
    _add_mirror_option(p)

    p = sub.add_parser("eval", help="print the test loss and accuracy of a checkpoint or run folder")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="evaluate on another dataset with the same channels and classes")
    p.add_argument("--data-root")
    p.add_argument("--kernels", help="CPU kernel backend: auto (default: numba when it loads, else numpy), numpy "
                                     "or numba; the line printed says which ran")
    p.set_defaults(check=_check_eval, run=_eval)
    _add_mirror_option(p)

    p = sub.add_parser("experiment", help="run a paper's experiment: `minires experiment degradation` "
                                          "(under `mpiexec -n N` its runs are spread over the ranks)")
    p.add_argument("name", choices=["degradation"], help="degradation: plain vs residual nets of growing depth")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--depths", default="8,20,56", help="comma-separated depths (6n+2), default 8,20,56")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=int, default=0, help="epochs at lr/10 first (every network alike)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(check=_check_experiment, run=_experiment)
    _add_mirror_option(p)

    p = sub.add_parser("summary", help="print a model's layers, output shapes, parameters and multiply-adds")
    p.add_argument("model", help="a model name, e.g. resnet50 or resnet20 (see `minires models`)")
    p.add_argument("--input-size", type=int, default=None, help="image side (default 224 ImageNet, 32 CIFAR)")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--depth", type=int, default=2, help="how deep into the module tree to list rows")
    p.set_defaults(check=_check_summary, run=_summary)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(run=_models)

    p = sub.add_parser("convert", help="turn a PyTorch .pth state dict into a minires .npz (needs torch)")
    p.add_argument("source", help="the .pth file (a state dict, or a checkpoint holding one)")
    p.add_argument("target", help="the .npz file to write")
    p.set_defaults(check=_check_convert, run=_convert)

    from .bench import add_bench_parser
    add_bench_parser(sub)
    from .course.cli import add_exercises_parser
    add_exercises_parser(sub)
    return parser


def _report(where, exc, usage, debug):
    """Print ``exc`` for the user and return the exit status: its whole message, or one line for a bug."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, USER_ERRORS) and not isinstance(exc, RecursionError) \
            or type(exc).__module__.startswith("minires."):
        print(f"{where}: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return USAGE if usage else FAILURE
    line = " ".join(f"{type(exc).__name__}: {exc}".split()).rstrip(":")
    hint = "" if debug else "; run it again with --debug (or MINIRES_DEBUG=1) to see the traceback"
    print(f"{where}: internal error (a bug in minires, please report it): {line}{hint}", file=sys.stderr)
    return FAILURE


@contextlib.contextmanager
def _silenced(quiet):
    """Nothing printed inside, when ``quiet`` (a rank other than 0 under mpiexec)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def _join_ranks(args):
    """Join the ranks of mpiexec for a verb that runs over them; returns the world size (1 in one process)."""
    from . import distributed
    sync_bn = bool(getattr(args, "sync_bn", False))
    if sync_bn and distributed.launched_rank() is None:
        raise UsageError("--sync-bn synchronises batch norm over the ranks that `mpiexec -n N minires train ...` "
                         "starts, and this process was started alone, not by an MPI launcher: launch it with "
                         "mpiexec, or leave --sync-bn out (in one process batch norm already sees the whole batch)")
    if distributed.launched_size() > 1 or sync_bn:
        return distributed.init()  # a RuntimeError under a launcher without mpi4py
    return 1


def _refused_with_the_ranks(argv, message):
    """This rank's command line was refused: under mpiexec, tell the ranks whose was not, so they stop too.

    They meet this rank in the agreement on the options (``main``); a rank alone, or one whose verb
    does not run over the ranks, has nobody to tell.
    """
    from . import distributed
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb not in PARALLEL or distributed.launched_size() == 1:
        return
    try:
        distributed.init()
    except RuntimeError:  # no mpi4py: every rank is on its own anyway
        return
    from .train.ranks import agree

    def refuse():
        raise UsageError(message.rpartition(" error: ")[2] or message)
    try:
        agree(refuse)
    except UsageError:
        pass


def _one_rank_failed(where, exc, usage, debug):
    """End every rank: this rank's error, met by it alone while the others may wait in a collective."""
    from . import distributed
    text = io.StringIO()
    with contextlib.redirect_stderr(text):
        status = _report(where, exc, usage, debug)
    distributed.abort(text.getvalue().rstrip("\n"), status)


def main(argv=None):
    """Run the ``minires`` command; returns its exit status (0 done, 1 failed, 2 usage error, 130 interrupted)."""
    from .distributed import launched_rank
    quiet = launched_rank() not in (None, 0)  # under mpiexec rank 0 alone prints, also argparse's errors
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    errors = io.StringIO()
    try:
        with _silenced(quiet), contextlib.redirect_stderr(errors):
            args, extra = parser.parse_known_args(argv)
            debug = args.debug or "--debug" in extra or os.environ.get("MINIRES_DEBUG", "") not in ("", "0")
            extra = [a for a in extra if a != "--debug"]
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse has printed the usage and the error (or the help)
        if not quiet:
            sys.stderr.write(errors.getvalue())
        status = exc.code if isinstance(exc.code, int) else USAGE if exc.code else 0
        if status:
            _refused_with_the_ranks(argv, (errors.getvalue().strip().splitlines() or ["refused"])[-1])
        return status
    where = " ".join(["minires", args.command] + [getattr(args, "exercises_command", None) or ""]).strip()
    world = 1
    if args.command in PARALLEL:
        try:
            world = _join_ranks(args)
        except Exception as exc:  # every rank alike: --sync-bn alone (2), mpi4py missing (1)
            with _silenced(quiet):
                return _report(where, exc, isinstance(exc, ValueError), debug)
    checked = False
    try:
        if getattr(args, "check", None):
            if world > 1:  # every rank learns whether any rank's options were refused
                from .train.ranks import agree
                agree(lambda: args.check(args))
            else:
                args.check(args)
        checked = True
        args.run(args)
    except KeyboardInterrupt:
        if world > 1:
            from . import distributed
            distributed.abort(f"{where}: interrupted", INTERRUPTED)
        print(f"{where}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`minires models | head -3`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILURE
    except Exception as exc:  # a ValueError says the input is wrong (ConfigError, CheckpointError ...)
        usage = not checked or isinstance(exc, ValueError)
        if world == 1:
            return _report(where, exc, usage, debug)
        from .train.ranks import raised_on_every_rank
        if not raised_on_every_rank(exc):
            _one_rank_failed(where, exc, usage, debug)
        with _silenced(quiet):  # every rank met it: rank 0 prints it, every rank exits with its status
            return _report(where, exc, usage, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
