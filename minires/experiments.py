"""Experiments from the papers that run on a laptop: the degradation problem (He et al. 2015, Figure 6).

Plain networks get *worse* in training error as they get deeper; their
residual twins, with the same layers and the same recipe, do not. Every run
here uses one recipe (optimiser, schedule, seed, data, augmentation); only
the depth and the presence of shortcuts change.
"""
import csv
import io
import json
import os
import time

from . import models
from .train import ConfigError, Run, TrainConfig
from .train.folder import save_figure, write_atomic
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
    """
    if isinstance(depths, (int, str)) or not depths or len(set(depths)) != len(depths):
        raise ConfigError(f"depths must be distinct depths such as (8, 20, 56), got {depths!r}")
    names = [f"{kind}{depth}" for depth in depths for kind in ("plain", "resnet")]
    missing = [name for name in names if name not in models.list()]
    if missing:
        raise ConfigError(f"no {missing[0]} model: depths must be 6n+2 with a plain twin (8, 20, 32, 44, 56, 110)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(out, f"degradation-{data}-{stamp}")
    configs = {name: TrainConfig(model=name, data=data, epochs=epochs, batch_size=batch_size, lr=lr,
                                 warmup_epochs=warmup_epochs, seed=seed, out=folder, data_root=data_root,
                                 augment=augment) for name in names}
    os.makedirs(folder, exist_ok=False)
    results = {}
    for name, config in configs.items():
        sub = os.path.join(folder, name)
        os.makedirs(sub)
        run = Run(config, folder=sub, progress=progress)
        started = time.perf_counter()
        run.fit(log=lambda line, name=name: log(f"{name}: {line}"))
        results[name] = run.history
        last = run.history[-1]
        log(f"{name}: final training error {100 * (1 - last['train_acc']):.2f}%, "
            f"test error {100 * (1 - last['test_acc']):.2f}% ({time.perf_counter() - started:.0f} s)")
    _write(folder, results, depths)
    log(f"degradation experiment written to {folder}")
    return results, folder


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
