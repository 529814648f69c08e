"""The run itself: data, model, optimiser and schedule; epochs of train and test; resuming; evaluation.

Under ``mpiexec -n N`` (after ``distributed.init()``) a run is data-parallel and takes the steps one
process would take on the same global batches: ``--batch-size`` is the global batch; every rank makes
each global batch as one process would, augmentation included, and keeps its rows (``DataLoader(shard=)``);
each rank's loss is its sum scaled by N / (images in the global batch), so the mean that
``nn.DistributedDataParallel`` takes of the gradients is the gradient of the global batch's mean loss,
a short last batch included. With ``sync_bn`` batch norm uses the statistics of the global batch too
(``nn.SyncBatchNorm``); without it each rank normalises its own part, as PyTorch's DDP does. Metrics
are reduced over the ranks, so every rank holds what one process would print; rank 0 alone prints and
writes the run folder. The ranks pass from one collective to the next only through points where they
agree on errors (``ranks.agree``), so a failure that every rank meets stops every rank alike.
"""
import dataclasses
import json
import math
import os
import time
import warnings

import numpy as np

from .. import distributed, models, nn, optim
from .. import functional as F
from .. import kernels as _kernels
from .. import rng as _rng
from ..autograd import no_grad
from ..backend import keep_freed_memory, normalize_device
from ..data import DataLoader, get_dataset
from .folder import (CHECKPOINT, META_KEY, RUN_FILES, CheckpointError, TrainingDiverged, checkpoint_path,
                     non_finite, read_checkpoint, save_figure, save_finite, write_atomic,
                     write_metrics)
from .options import (ConfigError, TrainConfig, check_world, choose_kernels, cpu_kernels, flag, resumed_config,
                      saved_config, with_overrides)
from .ranks import agree, check_same_run, on_every_rank

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


def _quiet(*args, **kwargs):
    pass


_READ_EVERY = 20  # steps between reads of the running loss and accuracy with a progress bar (a read waits for a GPU)
_HOST = (np.ndarray, np.generic, float, int)  # numbers that cost nothing to read (a GPU array makes the host wait)


def _eval_totals(model, loader, batches):
    """[summed cross-entropy, correct predictions, images] of ``model`` in eval mode over ``batches(loader)``."""
    model.eval()
    loss, correct, seen = 0.0, 0, 0  # the sums stay on the model's device until the end (no wait per batch)
    with no_grad():
        for images, labels in batches(loader):
            n = labels.shape[0]
            if not n:  # this rank's part of a short batch can be empty (eval mode needs no other rank)
                continue
            logits = model(images)
            loss, seen = loss + F.cross_entropy(logits, labels).data.astype(np.float64) * n, seen + n
            correct = correct + (logits.data.argmax(axis=1) == labels.data).sum()
    F.check_labels()
    return np.array([float(loss), int(correct), seen], dtype=np.float64)


def _means(totals, loader):
    """(mean cross-entropy, accuracy) from ``_eval_totals``; no image at all is an error."""
    if not totals[2]:
        raise ValueError(f"evaluate: {loader!r} yields no images, so there is nothing to evaluate "
                         "(a drop_last loader whose batch_size is above the number of images?)")
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def _evaluate(model, loader, batches):
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over ``batches(loader)``, in this process."""
    return _means(_eval_totals(model, loader, batches), loader)


def _set_random_state(state):
    _rng.generator().bit_generator.state = state


class Run:
    """One training run: model, data, optimiser, schedule and the run folder.

    Under ``mpiexec`` the run is data-parallel over all ranks (see the module's docstring), and
    every rank must build it; ``data_parallel=False`` trains in this process alone even there.
    ``self.model`` is the plain model on every rank (what checkpoints hold); ``self.ddp`` the
    ``DistributedDataParallel`` around it that training calls (None in one process).
    """

    def __init__(self, config, folder=None, progress=True, data_parallel=True):
        self.world = distributed.world_size() if data_parallel else 1
        self.rank = distributed.rank() if data_parallel else 0
        agree(lambda: self._build(config, progress), self.world)  # the part that reads: any rank may fail
        self._join(folder)

    def _build(self, config, progress):
        """Data, model, optimiser and schedule: this rank's own work, no collective."""
        config.check()  # also the options changed since the config was built
        check_world(config, self.world)
        self.progress = progress and self.rank == 0
        keep_freed_memory()  # every step frees and reallocates the same arrays: keep them (see backend)
        self.device = normalize_device(config.device)
        ran, self.kernels_why = choose_kernels(config.kernels, self.device, " (a resumed run keeps the kernels "
                                                "it ran with: give --kernels numpy or --kernels auto to choose again)")
        self.config = config = dataclasses.replace(config, kernels=ran)  # config.json records what ran
        _rng.manual_seed(config.seed)
        train_set = get_dataset(config.data, root=config.data_root, train=True, download=config.download)
        test_set = get_dataset(config.data, root=config.data_root, train=False, download=config.download)
        self.info = train_set.info
        train_tf, test_tf = _transforms(config.data, self.info, config.augment)
        train_set.transform, test_set.transform = train_tf, test_tf
        # batch norm cannot normalise one image whose features are 1x1: a last batch of one is left out,
        # as drop_last does in PyTorch; every other batch size keeps all the images of an epoch
        drop_last = len(train_set) % config.batch_size == 1
        shard = (self.rank, self.world) if self.world > 1 else None
        self.train_loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=(config.seed, 1),
                                       drop_last=drop_last, device=self.device, shard=shard)
        self.test_loader = DataLoader(test_set, 256, shuffle=False, device=self.device, shard=shard)
        self.model = build_model(config.model, self.info).to(self.device)
        if self.world > 1 and config.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        elif self.world > 1 and not drop_last and 0 < len(train_set) % config.batch_size < self.world:
            last = len(train_set) % config.batch_size
            raise ConfigError(f"the last batch of an epoch holds {last} images ({len(train_set)} = "
                              f"{len(train_set) // config.batch_size} x {config.batch_size} + {last}), fewer than "
                              f"the {self.world} ranks, so a rank would get none, and batch norm cannot normalise "
                              "an empty batch on its own: add --sync-bn (batch norm over the global batch), or "
                              f"choose another {flag('batch_size')}")
        for loader in (self.train_loader, self.test_loader):  # the images in the model's float type
            loader.dtype = next(iter(self.model.parameters())).data.dtype
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

    def _join(self, folder):
        """The ranks compare their runs, rank 0 makes the folder and names it to all, DDP joins the models."""
        self.ddp = None
        if self.world > 1:
            check_same_run(self.config, self.model)
        self.folder = agree(lambda: folder or (self._new_folder() if self.rank == 0 else None), self.world)
        if self.world > 1:
            self.folder = distributed.broadcast_object(self.folder)
            try:  # with synchronised batch norm every rank's running statistics are the same already
                self.ddp = nn.DistributedDataParallel(self.model, broadcast_buffers=not self.config.sync_bn)
            except ValueError as exc:  # it compares the parameters on every rank
                raise on_every_rank(exc) from None

    def header(self):
        """One line on what the run trains, where, and with which kernels (and why those)."""
        c = self.config
        ranks = f" on {self.world} ranks" if self.world > 1 else ""
        hint = "; --kernels numpy runs the NumPy reference" \
            if c.kernels != "numpy" and self.device == "cpu" and not self.kernels_why.startswith("--") else ""
        epochs = f"{c.epochs} epoch{'' if c.epochs == 1 else 's'}"
        return (f"training {c.model} on {c.data}: {epochs} of batch {c.batch_size} on {self.device}{ranks}, "
                f"kernels {c.kernels} ({self.kernels_why}{hint})")

    def _on_rank0(self, write):
        """``write()`` on rank 0 alone, the rank that writes the folder; a failure is raised on every rank."""
        return agree(lambda: write() if self.rank == 0 else None, self.world)

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
        return self._alike(TrainingDiverged(
            f"training diverged in epoch {self.epoch + 1}, step {step} of {len(self.train_loader)}: {what} "
            f"(learning rate {self.optimizer.lr:.4g}). Start again with a smaller --lr (now {c.lr:g}; try a "
            f"tenth of it), a warm-up (--warmup-epochs 1) or less --weight-decay (now {c.weight_decay:g}). {kept}"))

    def _alike(self, exc):
        """``exc`` for an error found in numbers that every rank holds alike, so every rank raises it."""
        return on_every_rank(exc) if self.world > 1 else exc

    def train_epoch(self):
        """One epoch of SGD; the loss is checked at every step and the weights at the end (``TrainingDiverged``)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a divergence gets one clear message
            return self._train_epoch()

    def _loss(self, logits, labels):
        """(the loss to differentiate, the global batch's mean loss, its images, its correct predictions).

        In one process the mean loss (float64) and the count stay on the model's device (see ``_read``).
        Under mpiexec: this rank's summed loss times N / (images in the global batch), whose gradient
        averaged over the N ranks (DDP) is that of the global batch's mean loss; the numbers are summed
        over the ranks, so every rank checks the same loss for divergence.
        """
        hits = (logits.data.argmax(axis=1) == labels.data).sum()
        if self.world == 1:
            loss = F.cross_entropy(logits, labels)
            return loss, loss.data.astype(np.float64), labels.shape[0], hits
        local = F.cross_entropy(logits, labels, reduction="sum")
        totals = distributed.all_reduce(np.array([local.item(), int(hits), labels.shape[0]], dtype=np.float64))
        n = int(totals[2])
        return local * (self.world / n), float(totals[0]) / n, n, int(totals[1])

    def _train_epoch(self):
        net = self.model if self.ddp is None else self.ddp
        net.train()
        total_loss, correct, seen, start, step = 0.0, 0, 0, time.perf_counter(), 0
        bar = self._batches(self.train_loader, f"epoch {self.epoch + 1}/{self.config.epochs} train")
        for step, (images, labels) in enumerate(bar, 1):
            logits = net(images)
            loss, value, n, hits = self._loss(logits, labels)  # value: the batch's mean loss, on its device
            if isinstance(value, _HOST) and not math.isfinite(value):  # free to read: checked every step
                raise self._diverged(f"the training loss is {float(value)}", step)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total_loss, correct, seen = total_loss + value * n, correct + hits, seen + n  # read by _read only
            if self.progress and (step % _READ_EVERY == 0 or isinstance(value, _HOST)):
                so_far, hits_so_far = self._read(total_loss, correct, step)
                bar.set_postfix(loss=f"{so_far / seen:.4f}", acc=f"{hits_so_far / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        if not seen:
            raise self._alike(ValueError(f"the training loader yields no batches: {self.train_loader!r}"))
        total_loss, correct = self._read(total_loss, correct, step)
        if self.world > 1:  # rank 0's running statistics (those the checkpoint holds) become every rank's
            for b in self.model.buffers():
                if b is not None:
                    distributed.broadcast(b.data, src=0)
        bad = non_finite(self.model.state_dict())
        if bad:
            raise self._diverged(f"its update left NaN or infinite values in {len(bad)} arrays (first {bad[0]})",
                                 step)
        return total_loss / seen, correct / seen, seen / (time.perf_counter() - start)

    def _read(self, total_loss, correct, step):
        """The running sums as host numbers, the loop's one wait for a GPU (every _READ_EVERY steps with a
        progress bar, else once an epoch); raises GPU labels out of range (F.check_labels), a non-finite loss."""
        F.check_labels()
        total_loss, correct = float(total_loss), int(correct)
        if not math.isfinite(total_loss):
            raise self._diverged(f"the training loss summed over its steps so far is {total_loss}", step)
        return total_loss, correct

    def evaluate(self, loader=None):
        """(mean loss, accuracy) of the model in eval mode on ``loader`` (the test set by default).

        Under mpiexec every rank evaluates its part of each batch and the sums are reduced over the ranks.
        """
        loader = self.test_loader if loader is None else loader
        totals = _eval_totals(self.model, loader, self._batches)
        if self.world > 1:  # an unsharded loader just counts every image N times: the means stay
            distributed.all_reduce(totals)
        try:
            return _means(totals, loader)
        except ValueError as exc:
            raise self._alike(exc) from None

    def fit(self, log=print, until=None):
        """Train up to epoch ``until`` (default: ``config.epochs``), checkpointing after every epoch.

        Under mpiexec every rank calls it; rank 0 alone logs and writes.
        """
        until = self.config.epochs if until is None else min(until, self.config.epochs)
        log = log if self.rank == 0 else _quiet
        self._on_rank0(self._open_folder)
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
            self._on_rank0(lambda: (self.save_checkpoint(), self.write_metrics()))
        if self.epoch < self.config.epochs:
            return self.history
        self._on_rank0(lambda: save_finite({k: v.numpy() for k, v in self.model.state_dict().items()},
                                           os.path.join(self.folder, "model.npz")))
        self.write_gradient_flow()
        return self.history

    def write_gradient_flow(self):
        """``gradient_flow.png``: the trained model's gradient per block, through identity and branch.

        Under mpiexec every rank computes it (DDP reduces the gradients of the backward); rank 0 writes it.
        """
        from ..viz.gradflow import gradient_flow, plot_block_contributions
        images, labels = next(iter(DataLoader(self.train_loader.dataset, 128, shuffle=False, device=self.device,
                                              dtype=self.train_loader.dtype)))
        self.model.eval()  # running statistics stay as trained (BN's backward works in eval mode)
        with warnings.catch_warnings():  # a model without residual adds (DenseNet) just gets no figure
            warnings.simplefilter("ignore", UserWarning)
            flow = gradient_flow(self.model, images, labels)
        self.model.zero_grad()
        if not flow.blocks:
            return
        title = f"{self.config.model} after {self.epoch} epochs: gradient at each block's input"
        self._on_rank0(lambda: save_figure(plot_block_contributions(flow, title=title),
                                           os.path.join(self.folder, "gradient_flow.png")))

    def write_metrics(self):
        write_metrics(self.folder, self.history)


def train(config=None, resume=None, progress=True, log=print, **overrides):
    """Run (or, with ``resume`` = a run folder or checkpoint, continue) a training run; returns the Run.

    A resumed run keeps its options: only those in ``RESUMABLE`` may change, and any other that
    differs is a ``ConfigError`` that lists them. The checkpoint is checked whole before
    anything is written; a failed resume leaves the run folder as it was.

    Under mpiexec every rank calls it with the same arguments and trains its part (see ``Run``); a
    checkpoint holds the global state, so a run resumes with the same or another number of ranks.
    An error that any rank meets before training is raised on every rank (``ranks.agree``).
    """
    log = log if distributed.rank() == 0 else _quiet
    if resume is not None:
        def read():
            path = checkpoint_path(resume)
            meta, model_state, opt_state = read_checkpoint(path)
            return path, meta, model_state, opt_state, resumed_config(path, meta, overrides)

        path, meta, model_state, opt_state, config = agree(read)
        run = Run(config, folder=os.path.dirname(os.path.abspath(path)), progress=progress)
        agree(lambda: run._resume(path, meta, model_state, opt_state))
        log(run.header())
        log(f"resuming {run.folder} after epoch {run.epoch}")
    else:
        run = Run(agree(lambda: with_overrides(config or TrainConfig(), overrides)), progress=progress)
        log(run.header())
        log(f"run folder: {run.folder}")
    run.fit(log=log)
    return run


def evaluate_checkpoint(path, data=None, data_root=None, progress=False, kernels=None):
    """(loss, accuracy, dataset name) of a checkpoint or a run folder on its (or another) test set.

    ``kernels`` forces a CPU backend for it ("auto" or None: the registry's choice); ``checkpoint_report``
    says which ran, and which the run trained with.
    """
    report = checkpoint_report(path, data=data, data_root=data_root, kernels=kernels)
    return report["loss"], report["accuracy"], report["data"]


def checkpoint_report(path, data=None, data_root=None, kernels=None):
    """``evaluate_checkpoint`` as a dict: loss, accuracy, data, kernels (that ran, and why), trained_kernels."""
    kernels = kernels or _kernels.AUTO
    if kernels not in cpu_kernels():
        raise ValueError(f"evaluate: --kernels {kernels!r} is no CPU kernel backend, and evaluation runs on the "
                         f"CPU; choose one of {', '.join(cpu_kernels())}")
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
    ran, why = choose_kernels(kernels, "cpu")
    loss, accuracy = _evaluate(model, DataLoader(test_set, 256), lambda loader: loader)
    return {"loss": loss, "accuracy": accuracy, "data": data, "kernels": ran, "kernels_why": why,
            "trained_kernels": config.kernels}
