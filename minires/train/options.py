"""A run's options: ``TrainConfig``, checked when built, and what a resumed run may change."""
import dataclasses
import os

import numpy as np

from .. import kernels as _kernels
from .. import models, optim
from ..backend import normalize_device
from ..data import list_datasets
from .folder import CheckpointError

# what a resumed run may change: where and how it runs, where its data lies, and how far it goes
RESUMABLE = ("epochs", "kernels", "device", "data_root", "download", "sync_bn")


class ConfigError(ValueError):
    """An option of a run is out of range, or conflicts with the run it resumes: a usage error."""


class ConfigTypeError(ConfigError, TypeError):
    """An option of a run has the wrong type, e.g. a string where a number belongs."""


_FLAGS = {"augment": "--no-augment", "nesterov": "--nesterov or --no-nesterov"}


def flag(name):
    """An option's name for messages: the field and its ``minires train`` flag."""
    return f"{name} ({_FLAGS.get(name, '--' + name.replace('_', '-'))})"


@dataclasses.dataclass
class TrainConfig:
    """The options of a run (the ``minires train`` flags), checked when built: a bad one is a ``ConfigError``."""

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
    kernels: str = "auto"             # "auto": numba when it loads, else numpy; a run records what ran
    device: str = "cpu"
    out: str = "runs"
    data_root: str = None
    augment: bool = True
    download: bool = True
    sync_bn: bool = False             # under mpiexec: batch norm over the global batch (nn.SyncBatchNorm)

    def __post_init__(self):
        self.check()

    def check(self):
        """Refuse any option that is NaN, infinite, out of range or unknown, naming it and its flag."""
        try:
            self._check()
        except TypeError as exc:
            raise ConfigTypeError(str(exc)) from None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check(self):
        own, count, number = "TrainConfig", optim.check_count, optim.check_number
        for name in ("model", "data", "schedule", "kernels", "device"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{own}: {flag(name)} must be a string, got {getattr(self, name)!r}")
        for name in ("nesterov", "augment", "download", "sync_bn"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{own}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.model not in models.list():
            raise ValueError(f"{own}: unknown model {self.model!r} (--model); choose one of: "
                             f"{', '.join(models.list())}")
        if self.data not in list_datasets():
            raise ValueError(f"{own}: unknown dataset {self.data!r} (--data); choose one of: "
                             f"{', '.join(list_datasets())}")
        self.epochs = count(own, flag("epochs"), self.epochs, low=1)
        self.batch_size = count(own, flag("batch_size"), self.batch_size, low=2,
                                why="batch norm computes its statistics over the images of a batch")
        self.lr = number(own, flag("lr"), self.lr)
        self.momentum = number(own, flag("momentum"), self.momentum, 0, 1, high_open=True)
        self.weight_decay = number(own, flag("weight_decay"), self.weight_decay)
        if self.nesterov and self.momentum == 0:
            raise ValueError(f"{own}: Nesterov momentum needs momentum > 0: give --momentum above 0, "
                             "or --no-nesterov")
        if self.schedule not in ("cosine", "multistep"):
            raise ValueError(f"{own}: unknown schedule {self.schedule!r} (--schedule); use 'cosine' or "
                             "'multistep'")
        self.warmup_epochs = count(own, flag("warmup_epochs"), self.warmup_epochs)
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"{own}: {flag('warmup_epochs')} {self.warmup_epochs} is more than the run's "
                             f"{self.epochs} epochs")
        self.seed = count(own, flag("seed"), self.seed)
        try:
            device = normalize_device(self.device)
        except ValueError:
            raise ValueError(f"{own}: unknown device {self.device!r} (--device); use 'cpu' or 'cuda'") from None
        if self.kernels not in _kernels.CHOICES:
            raise ValueError(f"{own}: unknown kernel backend {self.kernels!r} (--kernels); choose one of "
                             f"{', '.join(_kernels.CHOICES)}")
        if self.kernels != _kernels.AUTO and _kernels.BACKENDS[self.kernels][1] == "cuda" and device != "cuda":
            raise ValueError(f"{own}: kernel backend {self.kernels!r} (--kernels) runs on a GPU; "
                             "add --device cuda")
        for name in ("out", "data_root"):
            value = getattr(self, name)
            if value is None and name == "data_root":
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise TypeError(f"{own}: {flag(name)} must be a folder path, got {value!r}")
            setattr(self, name, os.fspath(value))

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def choose_kernels(name, device, why_unavailable=""):
    """(the kernels that will serve ``device``'s arrays, why those) for ``--kernels name``.

    "auto" leaves the registry's choice alone (``use_kernels``, ``MINIRES_KERNELS``, else numba when it
    loads); a named backend is forced, and one that does not load here is an error that names ``--kernels``.
    """
    if name == _kernels.AUTO:
        ran, why = _kernels.active(device), _kernels.why(device)
        return ran, f"minires.use_kernels({ran!r})" if why.startswith("forced") else why
    try:
        _kernels.use(name)
    except _kernels.BackendUnavailable as exc:
        raise _kernels.BackendUnavailable(f"{flag('kernels')} {name!r}: {exc}{why_unavailable}") from None
    return name, f"--kernels {name}"


def cpu_kernels():
    """The ``--kernels`` choices that run on the CPU: "auto", "numpy", "numba"."""
    return [n for n in _kernels.CHOICES if n == _kernels.AUTO or _kernels.BACKENDS[n][1] == "cpu"]


def check_world(config, world):
    """Refuse a run that ``world`` ranks cannot share: ``--batch-size`` is the global batch, split evenly."""
    if world > 1 and config.batch_size % world:
        low = config.batch_size // world * world
        such = f"{low} or {low + world}" if low >= 2 else f"{low + world}"
        raise ConfigError(f"{flag('batch_size')} {config.batch_size} is the global batch, split evenly over the "
                          f"{world} ranks (mpiexec -n {world}), and {config.batch_size} is not a multiple of "
                          f"{world}: give a multiple of {world} such as {such}, or launch a number of ranks that "
                          f"divides {config.batch_size}")


def with_overrides(config, overrides):
    """A copy of ``config`` with ``overrides``, checked (an unknown option is a ``ConfigError`` too)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; a run has: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **overrides)


def saved_config(path, meta):
    """The TrainConfig a checkpoint was written with; ``CheckpointError`` when it is not a valid one."""
    try:
        return TrainConfig.from_json(meta["config"])
    except (ConfigError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} holds invalid run options: {exc}") from None


def _device(name):
    try:
        return normalize_device(name)
    except (ValueError, TypeError):
        return name  # TrainConfig's check names it


def resumed_config(path, meta, overrides):
    """The options of the run ``path`` continues, with ``overrides``; a conflicting option is a ``ConfigError``."""
    saved = saved_config(path, meta)
    conflicts = [f"{flag(k)} {v!r} (the run has {getattr(saved, k)!r})" for k, v in overrides.items()
                 if k not in RESUMABLE and hasattr(saved, k) and v != getattr(saved, k)]
    if conflicts:
        raise ConfigError(f"--resume continues {os.path.dirname(os.path.abspath(path))} with the options it "
                          f"started with, and these differ from them: {'; '.join(conflicts)}. Leave them out (only "
                          "--epochs, --kernels, --device, --data-root and --sync-bn may change), or start a new run")
    if "device" in overrides and "kernels" not in overrides and _device(overrides["device"]) != _device(saved.device):
        overrides = dict(overrides, kernels=_kernels.AUTO)  # the kernels it recorded ran on the other device
    config = with_overrides(saved, overrides)
    if config.epochs < meta["epoch"]:
        raise ConfigError(f"{flag('epochs')} {config.epochs} is fewer than the {meta['epoch']} epochs the run "
                          f"has already trained; give --epochs {meta['epoch']} or more")
    return config
