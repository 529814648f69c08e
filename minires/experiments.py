"""Experiments from the papers that run on a laptop: the degradation problem (He et al. 2015, Figure 6).

Plain networks get *worse* in training error as they get deeper; their
residual twins, with the same layers and the same recipe, do not. Every run
here uses one recipe (optimiser, schedule, seed, data, augmentation); only
the depth and the presence of shortcuts change.

The runs are independent, so under ``mpiexec -n N`` they are spread over the
ranks (each rank trains its runs whole, in one process: no data parallelism)
and rank 0 gathers their histories and writes the table and the figure. Each
run seeds itself, so the results are those of one process, whatever N.
"""
import csv
import io
import json
import os
import time

from . import distributed, models
from .train import ConfigError, Run, TrainConfig
from .train.folder import save_figure, write_atomic
from .train.ranks import agree
from .viz.figure import colors, subplots


def degradation(data="digits", depths=(8, 20, 56), epochs=20, batch_size=64, lr=0.1, warmup_epochs=0, seed=0,
                out="runs", data_root=None, augment=False, progress=True, log=print):
    """Train plain and residual networks of each depth with one recipe; write the curves and the figure.

    Returns {"plain20": history, "resnet20": history, ...} and writes into a
    new folder under ``out``: ``degradation.csv`` (one row per model and
    epoch), ``degradation.json``, ``degradation.png`` (training error, solid,
    and test error, dashed, against epochs: plain networks left, ResNets
    right, as in the paper's Figure 6) and one run folder per model. Every option is
    checked (a ``ConfigError``) before any folder is made.

    Under mpiexec every rank calls it alike: rank 0 makes the folder, each rank trains its share of
    the runs (``spread``) into their run folders, and rank 0 writes the rest and alone logs (the other
    ranks' runs when they are gathered, a line each). Every rank returns all the results.
    """
    rank, world = distributed.rank(), distributed.world_size()
    quiet = rank != 0

    def recipe():
        if isinstance(depths, (int, str)) or not depths or len(set(depths)) != len(depths):
            raise ConfigError(f"depths must be distinct depths such as (8, 20, 56), got {depths!r}")
        names = [f"{kind}{depth}" for depth in depths for kind in ("plain", "resnet")]
        missing = [name for name in names if name not in models.list()]
        if missing:
            raise ConfigError(f"no {missing[0]} model: depths must be 6n+2 with a plain twin "
                              "(8, 20, 32, 44, 56, 110)")
        return {name: TrainConfig(model=name, data=data, epochs=epochs, batch_size=batch_size, lr=lr,
                                  warmup_epochs=warmup_epochs, seed=seed, out=out, data_root=data_root,
                                  augment=augment) for name in names}

    def make_folder():
        if quiet:
            return None
        path = os.path.join(out, f"degradation-{data}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(path, exist_ok=False)
        return path

    configs = agree(recipe)  # an option refused on one rank is refused on every rank
    folder = distributed.broadcast_object(agree(make_folder))
    mine, lines = {}, []
    for name in spread(list(configs), world)[rank]:
        config = configs[name]
        config.out = folder
        sub = os.path.join(folder, name)
        os.makedirs(sub)
        run = Run(config, folder=sub, progress=progress and not quiet, data_parallel=False)
        started = time.perf_counter()
        run.fit(log=_quiet if quiet else lambda line, name=name: log(f"{name}: {line}"))
        mine[name] = run.history
        last = run.history[-1]
        lines.append(f"{name}: final training error {100 * (1 - last['train_acc']):.2f}%, "
                     f"test error {100 * (1 - last['test_acc']):.2f}% ({time.perf_counter() - started:.0f} s"
                     f"{f' on rank {rank}' if world > 1 else ''})")
        if not quiet:
            log(lines[-1])
    gathered = distributed.all_gather_object((mine, lines))
    for part, _ in gathered:
        mine.update(part)
    results = {name: mine[name] for name in configs}  # in the recipe's order, whoever trained them
    agree(lambda: None if quiet else _write(folder, results, depths))
    if not quiet:
        for line in [line for _, their_lines in gathered[1:] for line in their_lines]:
            log(line)
        log(f"degradation experiment written to {folder}")
    return results, folder


def _quiet(*args, **kwargs):
    pass


def spread(names, world):
    """Each rank's share of the runs ``names``: the deepest first, each to the rank with the least depth so far.

    The depth stands for a run's time (layers x the same data), so the ranks finish about together.
    """
    shares, load = [[] for _ in range(world)], [0] * world
    depth = {name: int(name.lstrip("abcdefghijklmnopqrstuvwxyz")) for name in names}
    for name in sorted(names, key=lambda n: -depth[n]):  # a stable sort: plain before resnet at a depth
        r = load.index(min(load))
        shares[r].append(name)
        load[r] += depth[name]
    return [[name for name in names if name in share] for share in shares]  # each in the recipe's order


def _write(folder, results, depths):
    rows = []
    for name, history in results.items():
        kind = "plain" if name.startswith("plain") else "resnet"
        for r in history:
            rows.append({"model": name, "kind": kind, "depth": int(name[len(kind):]), "epoch": r["epoch"],
                         "train_error": 1 - r["train_acc"], "test_error": 1 - r["test_acc"],
                         "train_loss": r["train_loss"], "test_loss": r["test_loss"]})
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(folder, "degradation.csv"), table.getvalue().encode())
    write_atomic(os.path.join(folder, "degradation.json"), json.dumps(rows, indent=1).encode())
    save_figure(plot_degradation(results, depths), os.path.join(folder, "degradation.png"), dpi=110)


def plot_degradation(results, depths):
    """Figure 6 of the paper: error against epochs, plain networks on the left, ResNets on the right."""
    fig, axes = subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, title in ((axes[0], "plain", "plain networks"), (axes[1], "resnet", "ResNets")):
        for depth, color in zip(depths, colors() * 10):
            history = results.get(f"{kind}{depth}")
            if not history:
                continue
            epochs = [r["epoch"] for r in history]
            ax.plot(epochs, [100 * (1 - r["train_acc"]) for r in history], "-", color=color,
                    label=f"{kind}-{depth} train")
            ax.plot(epochs, [100 * (1 - r["test_acc"]) for r in history], "--", color=color, alpha=0.7,
                    label=f"{kind}-{depth} test")
        ax.set(title=title, xlabel="epoch")
        ax.set_yscale("symlog", linthresh=1.0)  # logarithmic above 1%, linear below: 0% stays on the plot
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.tight_layout()
    return fig
