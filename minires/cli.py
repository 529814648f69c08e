"""The ``minires`` command: ``minires summary resnet50``, ``minires convert in.pth out.npz`` ..."""
import argparse
import sys


def _summary(args):
    from . import models
    from .viz import summary
    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.in_channels is not None:
        kwargs["in_channels"] = args.in_channels
    model = models.get(args.model, **kwargs)
    size = args.input_size or (32 if model.__class__.__name__.startswith(("Cifar", "PreActCifar", "Dense",
                                                                          "Highway")) else 224)
    channels = args.in_channels or 3
    summary(model, (1, channels, size, size), depth=args.depth)


def _train(args):
    from .train import TrainConfig, train
    overrides = {k: v for k, v in {
        "model": args.model, "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay, "seed": args.seed,
        "kernels": args.kernels, "device": args.device, "out": args.out, "data_root": args.data_root,
        "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
        "nesterov": args.nesterov}.items() if v is not None}
    if args.no_augment:
        overrides["augment"] = False
    if args.resume:
        run = train(resume=args.resume, progress=not args.quiet, **{k: v for k, v in overrides.items()
                                                                   if k in ("epochs", "kernels", "device")})
    else:
        from . import data, models
        if overrides.get("model", "resnet20") not in models.list():
            raise ValueError(f"unknown model {overrides['model']!r}; choose one of: {', '.join(models.list())}")
        if overrides.get("data", "digits") not in data.list_datasets():
            raise ValueError(f"unknown dataset {overrides['data']!r}; choose one of: "
                             f"{', '.join(data.list_datasets())}")
        run = train(TrainConfig(), progress=not args.quiet, **overrides)
    last = run.history[-1]
    print(f"done: test accuracy {100 * last['test_acc']:.2f}% after {last['epoch']} epochs; "
          f"run folder: {run.folder}")


def _eval(args):
    from .train import evaluate_checkpoint
    loss, acc, data = evaluate_checkpoint(args.checkpoint, data=args.data, data_root=args.data_root)
    print(f"{data} test set: loss {loss:.4f}, accuracy {100 * acc:.2f}%")


def _experiment(args):
    from .experiments import degradation
    depths = tuple(int(d) for d in args.depths.split(","))
    from . import models
    for d in depths:
        for kind in ("plain", "resnet"):
            if f"{kind}{d}" not in models.list():
                raise ValueError(f"no {kind}{d} model: depths must be 6n+2 with a plain twin "
                                 "(8, 20, 32, 44, 56, 110)")
    degradation(data=args.data, depths=depths, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                warmup_epochs=args.warmup_epochs, seed=args.seed, out=args.out, data_root=args.data_root,
                progress=not args.quiet)


def _models(args):
    from . import models
    print("\n".join(models.list()))


def _convert(args):
    from .serialization import convert_torch_checkpoint
    count = convert_torch_checkpoint(args.source, args.target)
    print(f"wrote {count} arrays to {args.target}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minires", description="minires: residual networks from scratch")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a residual network (default: resnet20 on the bundled digits)")
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
    p.add_argument("--kernels", help="kernel backend: numpy (default), numba; on a GPU cupy (default) or numba-cuda")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--out", help="parent folder of the run folder (default ./runs)")
    p.add_argument("--resume", help="a run folder or checkpoint.npz to continue")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train)

    p = sub.add_parser("eval", help="print the test loss and accuracy of a checkpoint or run folder")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="evaluate on another dataset with the same channels and classes")
    p.add_argument("--data-root")
    p.set_defaults(run=_eval)

    p = sub.add_parser("experiment", help="run a paper's experiment: `minires experiment degradation`")
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
    p.set_defaults(run=_experiment)

    p = sub.add_parser("summary", help="print a model's layers, output shapes, parameters and multiply-adds")
    p.add_argument("model", help="a model name, e.g. resnet50 or resnet20 (see `minires models`)")
    p.add_argument("--input-size", type=int, default=None, help="image side (default 224 ImageNet, 32 CIFAR)")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--depth", type=int, default=2, help="how deep into the module tree to list rows")
    p.set_defaults(run=_summary)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(run=_models)

    p = sub.add_parser("convert", help="turn a PyTorch .pth state dict into a minires .npz (needs torch)")
    p.add_argument("source", help="the .pth file (a state dict, or a checkpoint holding one)")
    p.add_argument("target", help="the .npz file to write")
    p.set_defaults(run=_convert)

    from .bench import add_bench_parser
    add_bench_parser(sub)
    from .course.cli import add_exercises_parser
    add_exercises_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"minires {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minires {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
