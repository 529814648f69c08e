"""The training loop: epochs of train and test, metrics, curves, and checkpoints that resume exactly.

A run writes into its own folder:

    config.json       the options of the run
    metrics.csv       one row per epoch: loss and accuracy, train and test, lr, images per second
    metrics.json      the same, for programs
    curves.png        loss and accuracy curves, train and test
    checkpoint.npz    everything needed to continue (model, optimiser, schedule, epoch, random state)
    model.npz         the final weights alone: ``model.load_state_dict(minires.load("model.npz"))``
    gradient_flow.png the trained model's gradient at each block input, via identity and residual branch

Checkpoints are ``.npz`` files (no pickle) written atomically, so a crash
mid-write leaves the previous checkpoint intact.
"""
import csv
import dataclasses
import io
import json
import os
import time
import warnings
import zipfile

import numpy as np

from . import functional as F
from . import kernels as _kernels
from . import models, optim
from . import rng as _rng
from .autograd import no_grad
from .backend import keep_freed_memory, normalize_device
from .data import DataLoader, get_dataset
from .serialization import save as _save_npz

CHECKPOINT = "checkpoint.npz"
META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint is corrupted, truncated or for another model; nothing was changed."""


@dataclasses.dataclass
class TrainConfig:
    """The options of a run (the ``minires train`` flags)."""

    model: str = "resnet20"
    data: str = "digits"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"          # "cosine", or "multistep" (divide by 10 at 50% and 75%)
    warmup_epochs: int = 0
    seed: int = 0
    kernels: str = "numpy"
    device: str = "cpu"
    out: str = "runs"
    data_root: str = None
    augment: bool = True
    download: bool = True

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------- checkpoints

def _flatten_state(model, optimizer, scheduler, meta):
    """One flat {name: array} mapping: model/..., optim/<param>/<buffer>, and the JSON metadata."""
    arrays = {f"model/{k}": v.numpy() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            arrays[f"optim/{index}/{name}"] = np.asarray(value)
    meta = dict(meta, optim_groups=opt["param_groups"], scheduler=scheduler.state_dict())
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def read_checkpoint(path):
    """(metadata, model state, optimiser state) from a checkpoint, or a ``CheckpointError`` saying why not."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable minires checkpoint (corrupted or truncated?): "
                              f"{type(exc).__name__}: {exc}") from None
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    opt_state = {}
    for k, v in arrays.items():
        if k.startswith("optim/"):
            _, index, name = k.split("/", 2)
            opt_state.setdefault(int(index), {})[name] = v
    return meta, model_state, {"state": opt_state, "param_groups": meta.get("optim_groups", [])}


# ---------------------------------------------------------------- building a run

# per dataset: the augmentation of the training set (pad-and-crop; flips where images allow them)
_AUGMENT = {"digits": (1, False), "mnist": (2, False), "fashion-mnist": (2, True), "cifar10": (4, True)}


def _transforms(data, info, augment):
    from .data import Compose, Normalize, RandomCrop, RandomHorizontalFlip
    norm = Normalize(info.mean, info.std)
    steps = []
    if augment:
        pad, flip = _AUGMENT.get(data, (0, False))
        if pad:
            steps.append(RandomCrop(info.image_size, padding=pad))
        if flip:
            steps.append(RandomHorizontalFlip())
    return Compose(steps + [norm]), norm


def build_model(name, info):
    """The named model for a dataset's channels and classes."""
    return models.get(name, in_channels=info.in_channels, num_classes=info.num_classes)


class Run:
    """One training run: model, data, optimiser, schedule and the run folder."""

    def __init__(self, config, folder=None, progress=True):
        self.config, self.progress = config, progress
        keep_freed_memory()  # every step frees and reallocates the same arrays: keep them (see backend)
        _kernels.use(config.kernels)
        self.device = normalize_device(config.device)
        _rng.manual_seed(config.seed)
        train_set = get_dataset(config.data, root=config.data_root, train=True, download=config.download)
        test_set = get_dataset(config.data, root=config.data_root, train=False, download=config.download)
        self.info = train_set.info
        train_tf, test_tf = _transforms(config.data, self.info, config.augment)
        train_set.transform, test_set.transform = train_tf, test_tf
        self.train_loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=(config.seed, 1),
                                       device=self.device)
        self.test_loader = DataLoader(test_set, 256, shuffle=False, device=self.device)
        self.model = build_model(config.model, self.info).to(self.device)
        self.optimizer = optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay, nesterov=config.nesterov)
        steps = config.epochs * len(self.train_loader)
        warm = config.warmup_epochs * len(self.train_loader)
        if config.schedule == "cosine":
            main = optim.CosineAnnealingLR(self.optimizer, T_max=max(1, steps - warm))
        elif config.schedule == "multistep":
            main = optim.MultiStepLR(self.optimizer, [int(0.5 * steps) - warm, int(0.75 * steps) - warm])
        else:
            raise ValueError(f"unknown schedule {config.schedule!r}; use 'cosine' or 'multistep'")
        self.scheduler = (optim.LinearWarmup(self.optimizer, warm, start_factor=0.1, mode="constant", after=main)
                          if warm else main)
        self.epoch, self.history = 0, []
        self.folder = folder or self._new_folder()
        try:  # the options of the run, also for a given folder (an experiment's, or a resumed run's)
            os.makedirs(self.folder, exist_ok=True)
            with open(os.path.join(self.folder, "config.json"), "w") as f:
                json.dump(self.config.to_json(), f, indent=2)
        except OSError as exc:
            raise OSError(f"cannot write the run folder {self.folder}: {exc.strerror or exc}") from None

    def _new_folder(self):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(self.config.out, f"{self.config.model}-{self.config.data}-{stamp}")
        folder, k = base, 1
        while True:
            try:
                os.makedirs(folder)  # not exist_ok: two runs started in the same second get two folders
                return folder
            except FileExistsError:
                k += 1
                folder = f"{base}-{k}"
            except OSError as exc:
                raise OSError(f"cannot write the run folder {folder}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self):
        meta = {"format": "minires-checkpoint-1", "model_name": self.config.model,
                "config": self.config.to_json(), "epoch": self.epoch, "history": self.history,
                "rng": _rng.generator().bit_generator.state, "loader": self.train_loader.state_dict(),
                "info": {"in_channels": self.info.in_channels, "num_classes": self.info.num_classes}}
        _save_npz(_flatten_state(self.model, self.optimizer, self.scheduler, meta),
                  os.path.join(self.folder, CHECKPOINT))

    def load_checkpoint(self, path):
        """Continue from ``path``; refuses (and changes nothing) if it is damaged or for another model."""
        meta, model_state, opt_state = read_checkpoint(path)
        if meta.get("model_name") != self.config.model:
            raise CheckpointError(f"{path} holds a {meta.get('model_name')!r} model, this run trains "
                                  f"{self.config.model!r}")
        try:
            self.model.load_state_dict(model_state)
        except Exception as exc:
            raise CheckpointError(f"{path} does not fit {self.config.model}: {exc}") from None
        self.optimizer.load_state_dict(opt_state)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.train_loader.load_state_dict(meta["loader"])
        _rng.generator().bit_generator.state = meta["rng"]
        self.epoch, self.history = int(meta["epoch"]), list(meta["history"])

    # ------------------------------------------------------------ epochs

    def _batches(self, loader, desc):
        if not self.progress:
            return loader
        from tqdm import tqdm
        return tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

    def train_epoch(self):
        self.model.train()
        total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        bar = self._batches(self.train_loader, f"epoch {self.epoch + 1}/{self.config.epochs} train")
        for images, labels in bar:
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            n = labels.shape[0]
            total_loss += loss.item() * n
            correct += int((logits.data.argmax(axis=1) == labels.data).sum())
            seen += n
            if self.progress:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        return total_loss / seen, correct / seen, seen / (time.perf_counter() - start)

    def evaluate(self, loader=None):
        """(mean loss, accuracy) of the model in eval mode on ``loader`` (the test set by default)."""
        loader = loader or self.test_loader
        self.model.eval()
        total_loss, correct, seen = 0.0, 0, 0
        with no_grad():
            for images, labels in self._batches(loader, "test"):
                logits = self.model(images)
                n = labels.shape[0]
                total_loss += F.cross_entropy(logits, labels).item() * n
                correct += int((logits.data.argmax(axis=1) == labels.data).sum())
                seen += n
        return total_loss / seen, correct / seen

    def fit(self, log=print, until=None):
        """Train up to epoch ``until`` (default: ``config.epochs``), checkpointing after every epoch."""
        until = self.config.epochs if until is None else min(until, self.config.epochs)
        while self.epoch < until:
            lr = self.optimizer.lr
            train_loss, train_acc, speed = self.train_epoch()
            test_loss, test_acc = self.evaluate()
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, "train_acc": train_acc,
                   "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "images_per_s": speed}
            self.history.append(row)
            log(f"epoch {self.epoch:3d}/{self.config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"test loss {test_loss:.4f} acc {test_acc:.4f}  lr {lr:.4g}  {speed:.0f} img/s")
            self.write_metrics()
            self.save_checkpoint()
        if self.epoch < self.config.epochs:
            return self.history
        _save_npz({k: v.numpy() for k, v in self.model.state_dict().items()},
                  os.path.join(self.folder, "model.npz"))
        self.write_gradient_flow()
        return self.history

    def write_gradient_flow(self):
        """``gradient_flow.png``: the trained model's gradient per block, through identity and branch."""
        from .viz.gradflow import gradient_flow, plot_block_contributions
        images, labels = next(iter(DataLoader(self.train_loader.dataset, 128, shuffle=False, device=self.device)))
        self.model.eval()  # running statistics stay as trained (BN's backward works in eval mode)
        with warnings.catch_warnings():  # a model without residual adds (DenseNet) just gets no figure
            warnings.simplefilter("ignore", UserWarning)
            flow = gradient_flow(self.model, images, labels)
        self.model.zero_grad()
        if not flow.blocks:
            return
        fig = plot_block_contributions(flow, title=f"{self.config.model} after {self.epoch} epochs: "
                                                   "gradient at each block's input")
        fig.savefig(os.path.join(self.folder, "gradient_flow.png"), dpi=100)

    def write_metrics(self):
        fields = list(self.history[0])
        with open(os.path.join(self.folder, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)
        with open(os.path.join(self.folder, "metrics.json"), "w") as f:
            json.dump(self.history, f, indent=2)
        plot_curves(self.history, os.path.join(self.folder, "curves.png"))


def plot_curves(history, path):
    """Loss and accuracy per epoch, train and test, side by side."""
    from .viz.figure import subplots
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


def train(config=None, resume=None, progress=True, log=print, **overrides):
    """Run (or, with ``resume`` = a run folder or checkpoint, continue) a training run; returns the Run."""
    if resume is not None:
        path = os.path.join(resume, CHECKPOINT) if os.path.isdir(resume) else resume
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        meta, _, _ = read_checkpoint(path)
        config = TrainConfig.from_json(meta["config"])
        for k, v in overrides.items():
            setattr(config, k, v)  # e.g. more epochs
        run = Run(config, folder=os.path.dirname(os.path.abspath(path)), progress=progress)
        run.load_checkpoint(path)
        log(f"resuming {run.folder} after epoch {run.epoch}")
    else:
        config = config or TrainConfig()
        for k, v in overrides.items():
            setattr(config, k, v)
        run = Run(config, progress=progress)
        log(f"run folder: {run.folder}")
    run.fit(log=log)
    return run


def evaluate_checkpoint(path, data=None, data_root=None, progress=False):
    """(loss, accuracy, dataset name) of a checkpoint or a run folder on its (or another) test set."""
    path = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    meta, model_state, _ = read_checkpoint(path)
    config = TrainConfig.from_json(meta["config"])
    data = data or config.data
    test_set = get_dataset(data, root=data_root or config.data_root, train=False)
    test_set.transform = _transforms(data, test_set.info, False)[1]
    if (test_set.info.in_channels, test_set.info.num_classes) != (meta["info"]["in_channels"],
                                                                   meta["info"]["num_classes"]):
        raise CheckpointError(f"{path} was trained for {meta['info']['in_channels']} channels and "
                              f"{meta['info']['num_classes']} classes; {data} has {test_set.info.in_channels} "
                              f"and {test_set.info.num_classes}")
    model = build_model(meta["model_name"], test_set.info)
    try:
        model.load_state_dict(model_state)
    except Exception as exc:
        raise CheckpointError(f"{path} does not fit {meta['model_name']}: {exc}") from None
    model.eval()
    total, correct, seen = 0.0, 0, 0
    with no_grad():
        for images, labels in DataLoader(test_set, 256):
            logits = model(images)
            total += F.cross_entropy(logits, labels).item() * labels.shape[0]
            correct += int((logits.data.argmax(axis=1) == labels.data).sum())
            seen += labels.shape[0]
    return total / seen, correct / seen, data
