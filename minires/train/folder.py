"""The files of a run folder, each written whole or not at all, and the checkpoint format."""
import csv
import io
import json
import math
import os

import numpy as np

from ..serialization import load as _load_npz
from ..serialization import write_atomic as _write_atomic
from ..serialization import save as _save_npz

CHECKPOINT = "checkpoint.npz"
META_KEY = "__meta__"
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", "curves.png", CHECKPOINT, "model.npz",
             "gradient_flow.png")
METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s")


class CheckpointError(ValueError):
    """A checkpoint is corrupted, truncated or for another model; nothing was changed."""


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept as it was."""


def write_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` whole or not at all (``serialization.write_atomic``)."""
    _write_atomic(path, lambda f: f.write(data))


def non_finite(arrays):
    """The names of the float arrays (or tensors) in ``arrays`` that hold a NaN or an infinity."""
    bad = []
    for name, value in arrays.items():
        a = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad.append(name)
    return bad


def save_finite(arrays, path):
    """``serialization.save`` for a run's weights; non-finite ones are refused and the file stays as it was."""
    bad = non_finite(arrays)
    if bad:
        raise TrainingDiverged(f"refusing to write {path}: {len(bad)} arrays hold NaN or infinite values "
                               f"(first {bad[0]}); the file on disk is unchanged")
    _save_npz(arrays, path)


# ---------------------------------------------------------------- checkpoints

_META = {"model_name": str, "config": dict, "epoch": int, "history": list, "rng": dict, "loader": dict,
         "scheduler": dict, "optim_groups": list, "info": dict}


def checkpoint_path(path):
    """The checkpoint of a run folder (or ``path`` itself); ``FileNotFoundError`` if there is none."""
    path = os.fspath(path)
    found = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.isfile(found):
        hint = ": give a run folder (it holds one from the end of its first epoch on)" if os.path.isdir(path) else ""
        raise FileNotFoundError(f"no checkpoint at {found}{hint}")
    return found


def read_checkpoint(path):
    """(metadata, model state, optimiser state) from a checkpoint, or a ``CheckpointError`` saying why not.

    Refused too: a checkpoint missing part of its metadata, with a damaged history, or holding NaN or
    infinite values.
    """
    try:
        arrays = dict(_load_npz(path))  # checked member by member: no pickles, no header claiming huge shapes
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, OSError, UnicodeDecodeError) as exc:  # SerializationError is a ValueError
        raise CheckpointError(f"{path} is not a readable minires checkpoint (corrupted or truncated?): "
                              f"{type(exc).__name__}: {exc}") from None
    meta = meta if isinstance(meta, dict) else {}
    wrong = [k for k, kind in _META.items() if not isinstance(meta.get(k), kind) or isinstance(meta.get(k), bool)]
    if not wrong and (meta["epoch"] < 0 or not all(isinstance(meta["info"].get(k), int)
                                                   for k in ("in_channels", "num_classes"))):
        wrong = ["epoch" if meta["epoch"] < 0 else "info"]
    if wrong:
        raise CheckpointError(f"{path} is not a complete minires checkpoint: its metadata lacks or garbles "
                              f"{', '.join(wrong)}")
    try:
        meta["history"] = [_history_row(row) for row in meta["history"]]
        if [row["epoch"] for row in meta["history"]] != list(range(1, meta["epoch"] + 1)):
            raise ValueError(f"it lists epochs {[row['epoch'] for row in meta['history']]}, not 1 to {meta['epoch']}")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds a damaged history of its epochs: {exc}") from None
    bad = non_finite(arrays)
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite values in {len(bad)} arrays (first {bad[0]}): "
                              "it was written by a run that diverged. Use an earlier checkpoint, or start a new "
                              "run with a smaller --lr")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    opt_state = {}
    for k, v in arrays.items():
        if k.startswith("optim/"):
            try:
                _, index, name = k.split("/", 2)
                opt_state.setdefault(int(index), {})[name] = v
            except ValueError:
                raise CheckpointError(f"{path} holds an array named {k!r}, not optim/<index>/<name>") from None
    return meta, model_state, {"state": opt_state, "param_groups": meta["optim_groups"]}


def _history_row(row):
    """One epoch's saved metrics, checked: the METRICS keys, a whole epoch number and finite values."""
    if not isinstance(row, dict) or set(row) != set(METRICS):
        raise ValueError(f"a history entry is {row!r:.120}, expected the keys {', '.join(METRICS)}")
    values = {k: float(row[k]) for k in METRICS}
    if not all(math.isfinite(v) for v in values.values()) or values["epoch"] != int(values["epoch"]):
        raise ValueError(f"a history entry holds a NaN, an infinity or a fractional epoch: {row!r:.200}")
    return dict(values, epoch=int(values["epoch"]))


def save_figure(fig, path, dpi=100):
    """A Matplotlib figure as a PNG at ``path``, written whole or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomic(path, buffer.getvalue())


def plot_curves(history, path):
    """Loss and accuracy per epoch, train and test, side by side."""
    from ..viz.figure import subplots
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, marker="o", label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def write_metrics(folder, history):
    """metrics.csv, metrics.json and curves.png of a run's history, each written whole or not at all."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=METRICS)
    writer.writeheader()
    writer.writerows(history)
    write_atomic(os.path.join(folder, "metrics.csv"), table.getvalue().encode())
    write_atomic(os.path.join(folder, "metrics.json"), json.dumps(history, indent=2).encode())
    plot_curves(history, os.path.join(folder, "curves.png"))
