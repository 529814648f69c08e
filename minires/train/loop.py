"""The run itself: data, model, optimiser and schedule; epochs of train and test; resuming; evaluation."""
import json
import math
import os
import time
import warnings

import numpy as np

from .. import functional as F
from .. import kernels as _kernels
from .. import models, optim
from .. import rng as _rng
from ..autograd import no_grad
from ..backend import keep_freed_memory, normalize_device
from ..data import DataLoader, get_dataset
from .folder import (CHECKPOINT, META_KEY, RUN_FILES, CheckpointError, TrainingDiverged, checkpoint_path,
                     non_finite, read_checkpoint, save_figure, save_finite, write_atomic,
                     write_metrics)
from .options import TrainConfig, resumed_config, saved_config, with_overrides

# per dataset: the augmentation of the training set (pad-and-crop; flips where images allow them)
_AUGMENT = {"digits": (1, False), "mnist": (2, False), "fashion-mnist": (2, True), "cifar10": (4, True)}


def _transforms(data, info, augment):
    from ..data import Compose, Normalize, RandomCrop, RandomHorizontalFlip
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


def _evaluate(model, loader, batches):
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over ``batches(loader)``; none is an error."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with no_grad():
        for images, labels in batches(loader):
            logits = model(images)
            n = labels.shape[0]
            total_loss += F.cross_entropy(logits, labels).item() * n
            correct += int((logits.data.argmax(axis=1) == labels.data).sum())
            seen += n
    if not seen:
        raise ValueError(f"evaluate: {loader!r} yields no images, so there is nothing to evaluate "
                         "(a drop_last loader whose batch_size is above the number of images?)")
    return total_loss / seen, correct / seen


def _set_random_state(state):
    _rng.generator().bit_generator.state = state


class Run:
    """One training run: model, data, optimiser, schedule and the run folder."""

    def __init__(self, config, folder=None, progress=True):
        config.check()  # also the options changed since the config was built
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
        # batch norm cannot normalise one image whose features are 1x1: a last batch of one is left out,
        # as drop_last does in PyTorch; every other batch size keeps all the images of an epoch
        self.train_loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=(config.seed, 1),
                                       drop_last=len(train_set) % config.batch_size == 1, device=self.device)
        self.test_loader = DataLoader(test_set, 256, shuffle=False, device=self.device)
        self.model = build_model(config.model, self.info).to(self.device)
        self.optimizer = optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay, nesterov=config.nesterov)
        steps = config.epochs * len(self.train_loader)
        warm = config.warmup_epochs * len(self.train_loader)
        if config.schedule == "cosine":
            main = optim.CosineAnnealingLR(self.optimizer, T_max=max(1, steps - warm))
        else:  # milestones inside the warm-up have passed when it ends
            main = optim.MultiStepLR(self.optimizer, [max(0, int(f * steps) - warm) for f in (0.5, 0.75)])
        self.scheduler = (optim.LinearWarmup(self.optimizer, warm, start_factor=0.1, mode="constant", after=main)
                          if warm else main)
        self.epoch, self.history = 0, []
        self.folder = folder or self._new_folder()

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

    def _open_folder(self):
        """Make the folder, remove what a crash left half-written in it, and write config.json."""
        try:
            os.makedirs(self.folder, exist_ok=True)
            stale = tuple(f".tmp-{name}-" for name in RUN_FILES) + tuple(f"{name}.tmp" for name in RUN_FILES)
            for entry in os.listdir(self.folder):
                if entry.startswith(stale):
                    os.remove(os.path.join(self.folder, entry))
            write_atomic(os.path.join(self.folder, "config.json"),
                         json.dumps(self.config.to_json(), indent=2).encode())
        except OSError as exc:
            raise OSError(f"cannot write the run folder {self.folder}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------ checkpoints

    def _state(self):
        """Everything a checkpoint holds, as ``read_checkpoint`` returns it: (metadata, model, optimiser)."""
        opt = self.optimizer.state_dict()
        meta = {"format": "minires-checkpoint-1", "model_name": self.config.model,
                "config": self.config.to_json(), "epoch": self.epoch, "history": list(self.history),
                "rng": _rng.generator().bit_generator.state, "loader": self.train_loader.state_dict(),
                "info": {"in_channels": self.info.in_channels, "num_classes": self.info.num_classes},
                "optim_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict()}
        return meta, {k: v.numpy() for k, v in self.model.state_dict().items()}, opt

    def _restore(self, meta, model_state, opt_state):
        """Set every part of the run from a checkpoint's; a part that does not fit is a ValueError naming it."""
        for part, restore, value in (("model", self.model.load_state_dict, model_state),
                                     ("optimiser state", self.optimizer.load_state_dict, opt_state),
                                     ("schedule", self.scheduler.load_state_dict, meta["scheduler"]),
                                     ("loader state", self.train_loader.load_state_dict, meta["loader"]),
                                     ("random state", _set_random_state, meta["rng"])):
            try:
                restore(value)
            except Exception as exc:  # a damaged entry can fail in any way
                kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
                raise ValueError(f"its {part} does not fit: {kind}{exc}") from None
        self.epoch, self.history = meta["epoch"], list(meta["history"])

    def save_checkpoint(self):
        """checkpoint.npz, atomically; refused (the previous one stays) if any weight is NaN or infinite."""
        meta, model_state, opt = self._state()
        arrays = {f"model/{k}": v for k, v in model_state.items()}
        for index, entry in opt["state"].items():
            for name, value in entry.items():
                arrays[f"optim/{index}/{name}"] = np.asarray(value)
        arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        save_finite(arrays, os.path.join(self.folder, CHECKPOINT))

    def load_checkpoint(self, path):
        """Continue from ``path``, all or nothing: if any part is damaged or foreign, nothing changes."""
        self._resume(path, *read_checkpoint(path))

    def _resume(self, path, meta, model_state, opt_state):
        if meta["model_name"] != self.config.model:
            raise CheckpointError(f"{path} holds a {meta['model_name']!r} model, this run trains "
                                  f"{self.config.model!r}")
        saved_config(path, meta)
        before = self._state()
        try:
            self._restore(meta, model_state, opt_state)
        except ValueError as exc:  # put back every part already set
            self._restore(*before)
            raise CheckpointError(f"{path} cannot be resumed (nothing was changed): {exc}") from None

    # ------------------------------------------------------------ epochs

    def _batches(self, loader, desc="test"):
        if not self.progress:
            return loader
        from tqdm import tqdm
        return tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

    def _diverged(self, what, step):
        """The ``TrainingDiverged`` for ``step`` of the epoch under way: what happened, what to change, what is kept."""
        c = self.config
        kept = (f"The last good checkpoint, after epoch {self.epoch}, is kept as it was: "
                f"{os.path.join(self.folder, CHECKPOINT)}." if self.epoch else "No checkpoint was written.")
        return TrainingDiverged(
            f"training diverged in epoch {self.epoch + 1}, step {step} of {len(self.train_loader)}: {what} "
            f"(learning rate {self.optimizer.lr:.4g}). Start again with a smaller --lr (now {c.lr:g}; try a "
            f"tenth of it), a warm-up (--warmup-epochs 1) or less --weight-decay (now {c.weight_decay:g}). {kept}")

    def train_epoch(self):
        """One epoch of SGD; the loss is checked at every step and the weights at the end (``TrainingDiverged``)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a divergence gets one clear message
            return self._train_epoch()

    def _train_epoch(self):
        self.model.train()
        total_loss, correct, seen, start, step = 0.0, 0, 0, time.perf_counter(), 0
        bar = self._batches(self.train_loader, f"epoch {self.epoch + 1}/{self.config.epochs} train")
        for step, (images, labels) in enumerate(bar, 1):
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            value = loss.item()  # one number a step: the cheap check that training has not diverged
            if not math.isfinite(value):
                raise self._diverged(f"the training loss is {value}", step)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            n = labels.shape[0]
            total_loss += value * n
            correct += int((logits.data.argmax(axis=1) == labels.data).sum())
            seen += n
            if self.progress:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        if not seen:
            raise ValueError(f"the training loader yields no batches: {self.train_loader!r}")
        bad = non_finite(self.model.state_dict())
        if bad:
            raise self._diverged(f"its update left NaN or infinite values in {len(bad)} arrays (first {bad[0]})",
                                 step)
        return total_loss / seen, correct / seen, seen / (time.perf_counter() - start)

    def evaluate(self, loader=None):
        """(mean loss, accuracy) of the model in eval mode on ``loader`` (the test set by default)."""
        return _evaluate(self.model, self.test_loader if loader is None else loader, self._batches)

    def fit(self, log=print, until=None):
        """Train up to epoch ``until`` (default: ``config.epochs``), checkpointing after every epoch."""
        until = self.config.epochs if until is None else min(until, self.config.epochs)
        self._open_folder()
        while self.epoch < until:
            lr = self.optimizer.lr
            train_loss, train_acc, speed = self.train_epoch()
            test_loss, test_acc = self.evaluate()
            if not math.isfinite(test_loss):
                raise self._diverged(f"the test loss after it is {test_loss}", len(self.train_loader))
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, "train_acc": train_acc,
                   "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "images_per_s": speed}
            self.history.append(row)
            log(f"epoch {self.epoch:3d}/{self.config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"test loss {test_loss:.4f} acc {test_acc:.4f}  lr {lr:.4g}  {speed:.0f} img/s")
            self.save_checkpoint()
            self.write_metrics()
        if self.epoch < self.config.epochs:
            return self.history
        save_finite({k: v.numpy() for k, v in self.model.state_dict().items()},
                    os.path.join(self.folder, "model.npz"))
        self.write_gradient_flow()
        return self.history

    def write_gradient_flow(self):
        """``gradient_flow.png``: the trained model's gradient per block, through identity and branch."""
        from ..viz.gradflow import gradient_flow, plot_block_contributions
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
        save_figure(fig, os.path.join(self.folder, "gradient_flow.png"))

    def write_metrics(self):
        write_metrics(self.folder, self.history)


def train(config=None, resume=None, progress=True, log=print, **overrides):
    """Run (or, with ``resume`` = a run folder or checkpoint, continue) a training run; returns the Run.

    A resumed run keeps its options: only those in ``RESUMABLE`` may change, and any other that
    differs is a ``ConfigError`` that lists them. The checkpoint is checked whole before
    anything is written; a failed resume leaves the run folder as it was.
    """
    if resume is not None:
        path = checkpoint_path(resume)
        meta, model_state, opt_state = read_checkpoint(path)
        run = Run(resumed_config(path, meta, overrides), folder=os.path.dirname(os.path.abspath(path)),
                  progress=progress)
        run._resume(path, meta, model_state, opt_state)
        log(f"resuming {run.folder} after epoch {run.epoch}")
    else:
        run = Run(with_overrides(config or TrainConfig(), overrides), progress=progress)
        log(f"run folder: {run.folder}")
    run.fit(log=log)
    return run


def evaluate_checkpoint(path, data=None, data_root=None, progress=False):
    """(loss, accuracy, dataset name) of a checkpoint or a run folder on its (or another) test set."""
    path = checkpoint_path(path)
    meta, model_state, _ = read_checkpoint(path)
    config = saved_config(path, meta)
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
    return (*_evaluate(model, DataLoader(test_set, 256), lambda loader: loader), data)
