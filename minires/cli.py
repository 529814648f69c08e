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


def _convert(args):
    from .serialization import convert_torch_checkpoint
    count = convert_torch_checkpoint(args.source, args.target)
    print(f"wrote {count} arrays to {args.target}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minires", description="minires: residual networks from scratch")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="print a model's layers, output shapes, parameters and multiply-adds")
    p.add_argument("model", help="a model name, e.g. resnet50 or resnet20 (see `minires models`)")
    p.add_argument("--input-size", type=int, default=None, help="image side (default 224 ImageNet, 32 CIFAR)")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--depth", type=int, default=2, help="how deep into the module tree to list rows")
    p.set_defaults(run=_summary)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(run=lambda args: print("\n".join(__import__("minires.models", fromlist=["list"]).list())))

    p = sub.add_parser("convert", help="turn a PyTorch .pth state dict into a minires .npz (needs torch)")
    p.add_argument("source", help="the .pth file (a state dict, or a checkpoint holding one)")
    p.add_argument("target", help="the .npz file to write")
    p.set_defaults(run=_convert)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"minires {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
