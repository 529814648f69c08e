"""The training loop: epochs of train and test, metrics, curves, and checkpoints that resume exactly.

A run writes into its own folder:

    config.json       the options of the run
    metrics.csv       one row per epoch: loss and accuracy, train and test, lr, images per second
    metrics.json      the same, for programs
    curves.png        loss and accuracy curves, train and test
    checkpoint.npz    everything needed to continue (model, optimiser, schedule, epoch, random state)
    model.npz         the final weights alone: ``model.load_state_dict(minires.load("model.npz"))``
    gradient_flow.png the trained model's gradient at each block input, via identity and residual branch

Checkpoints are ``.npz`` files (no pickle). Nothing is lost: every file of the
folder is written whole or not at all (a temporary file, then a rename), a NaN
or infinite loss stops the run with ``TrainingDiverged`` and the last good
checkpoint kept, non-finite weights are never written, and resuming is all or
nothing (a checkpoint that cannot be resumed changes neither the run nor its folder).

``options`` holds a run's options and their checks, ``folder`` the files of
its folder and the checkpoint format, ``loop`` the run itself, ``ranks`` what a
data-parallel run adds under ``mpiexec -n N`` (errors the ranks agree on, the
check that every rank runs the same run). There, ``--batch-size`` is the global
batch, rank 0 alone writes the folder, and a checkpoint resumes on any number of
ranks; with ``sync_bn`` the N ranks take the steps of one process.
"""
from .folder import CHECKPOINT, METRICS, RUN_FILES, CheckpointError, TrainingDiverged, checkpoint_path, \
    plot_curves, read_checkpoint
from .loop import Run, build_model, checkpoint_report, evaluate_checkpoint, train
from .options import RESUMABLE, ConfigError, ConfigTypeError, TrainConfig

__all__ = ["CHECKPOINT", "METRICS", "RESUMABLE", "RUN_FILES", "CheckpointError", "ConfigError", "ConfigTypeError",
           "Run", "TrainConfig", "TrainingDiverged", "build_model", "checkpoint_path", "checkpoint_report",
           "evaluate_checkpoint",
           "plot_curves", "read_checkpoint", "train"]
