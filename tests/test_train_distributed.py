"""`mpiexec -n N minires train` and `minires experiment` over ranks: the same steps as one process, one writer.

Each multi-rank case launches the real command line under ``mpiexec`` (with a
timeout, so a hang fails the test instead of the run) through a small wrapper,
``RANK_CLI``: it tags every line a rank prints with ``[rank r]``, prints the
rank's exit status, and can apply a patch the test asks for by environment:
models in float64, a run stopped after its first epoch, a failure on one
rank, a rank without mpi4py, a record of every file a rank opens for writing.

The oracle is one process on the same global batches. The comparison runs in
float64 (the wrapper builds the model in float64; the loader follows the
model's type), where N ranks and one process differ only by the order of
their sums: about 1e-16 relative a step. In float32 that round-off, amplified
over a dozen SGD steps at lr 0.1, already reaches 1e-3 in a weight, as large
as a real mistake (without --sync-bn the weights differ by about 2e-2), so
float32 could not tell the two apart. Without mpi4py or mpiexec the multi-rank
tests skip; the rest needs no MPI.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minires import cli, distributed, experiments, train
from minires.data import DataLoader, get_dataset
from minires.train.loop import _transforms

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not distributed.is_available(),
                               reason="needs mpi4py and mpiexec (pip install 'minires[mpi]')")

RANK_CLI = r'''
import json, os, sys, time
RANK = next((os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if v in os.environ), "0")

class Tagged:  # whole lines only, each in one write: the ranks share the launcher's pipe
    def __init__(self, stream):
        self.stream, self.partial = stream, ""
    def write(self, text):
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        if lines:
            self.stream.write("".join("[rank %s] %s\n" % (RANK, line) for line in lines))
        return len(text)
    def flush(self):
        self.stream.flush()
    def isatty(self):
        return False

sys.stdout, sys.stderr = Tagged(sys.stdout), Tagged(sys.stderr)
writes = []
if os.environ.get("T_AUDIT"):
    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                    (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                writes.append(str(path))
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.chmod"):
            writes.append(str(args[0]))
    sys.addaudithook(audit)
if os.environ.get("T_NO_MPI4PY"):
    sys.modules["mpi4py"] = None
import minires.train.loop as loop
if os.environ.get("T_FLOAT64"):
    build = loop.build_model
    loop.build_model = lambda name, info: build(name, info).double()
if os.environ.get("T_UNTIL"):
    fit = loop.Run.fit
    loop.Run.fit = lambda self, log=print, until=None: fit(self, log, int(os.environ["T_UNTIL"]))
if os.environ.get("T_CRASH_RANK") == RANK:
    def evaluate(self, loader=None):
        with open(os.environ["T_CRASH_FILE"], "w") as f:
            f.write(repr(time.time()))
        raise OSError("the disk of rank %s is full (simulated)" % RANK)
    loop.Run.evaluate = evaluate
from minires.cli import main
code = main(sys.argv[1:])
writes = [w for w in writes if not w.startswith("/dev/") and not w.isdigit()]  # devnull; a folder's fd
for path in writes:  # a line each: a launcher passes on short lines whole, long ones maybe cut by another rank's
    print("WROTE " + path, flush=True)
print("EXIT %d MPI %s" % (code, "mpi4py.MPI" in sys.modules), flush=True)
sys.exit(code)
'''

TRAIN = ["train", "--model", "resnet8", "--epochs", "2", "--batch-size", "256", "--quiet"]  # 12 steps
SLOW = 240  # seconds: a launch that takes longer has hung


class Launch:
    """One launch's outcome: return code, each rank's lines of stdout and of stderr, and its EXIT line."""

    def __init__(self, proc):
        self.proc, self.returncode = proc, proc.returncode
        self.out, self.err = self._split(proc.stdout), self._split(proc.stderr)
        self.exits, self.writes, self.mpi = {}, {}, {}
        for rank, lines in self.out.items():
            self.writes[rank] = [line[6:] for line in lines if line.startswith("WROTE ")]
            for line in lines:
                if line.startswith("EXIT "):
                    code, _, mpi = line[5:].partition(" MPI ")
                    self.exits[rank], self.mpi[rank] = int(code), mpi == "True"

    @staticmethod
    def _split(text):
        lines = {}
        for line in text.splitlines():
            if line.startswith("[rank "):
                tag, _, rest = line.partition("] ")
                lines.setdefault(int(tag[6:]), []).append(rest)
            else:
                lines.setdefault(None, []).append(line)  # the launcher's own lines
        return lines

    def says(self, text):
        """The ranks whose stderr holds ``text``."""
        return sorted(r for r, lines in self.err.items() if any(text in line for line in lines))

    def __repr__(self):
        return f"rc {self.returncode}\nstdout:\n{self.proc.stdout[-3000:]}\nstderr:\n{self.proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "rank_cli.py"
    path.write_text(RANK_CLI)
    return str(path)


def launch(wrapper, cwd, ranks, *commands, env=None, timeout=SLOW):
    """``minires ARGS`` on ``ranks`` ranks (None: one process, no launcher); several commands: one rank each."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    child_env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                     PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg", **(env or {}))
    if ranks is None:
        argv = [sys.executable, wrapper, *commands[0]]
    elif len(commands) == 1:
        argv = [MPIEXEC, "-n", str(ranks), sys.executable, wrapper, *commands[0]]
    else:  # MPMD: rank r runs commands[r]
        argv = [MPIEXEC]
        for r, args in enumerate(commands):
            argv += ([":"] if r else []) + ["-n", "1", sys.executable, wrapper, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env, cwd=cwd)
    return Launch(proc)


def run_folder(out):
    (name,) = os.listdir(out)  # one run folder, made by rank 0 alone
    return os.path.join(out, name)


def weights(folder):
    with np.load(os.path.join(folder, "model.npz")) as npz:
        return {k: npz[k] for k in npz.files}


def history(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in json.load(f)]


def worst(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def close(rows, expected, tol=1e-12):
    return len(rows) == len(expected) and all(abs(r[k] - e[k]) <= tol for r, e in zip(rows, expected) for k in e)


@pytest.fixture(scope="module")
def one_process(wrapper, tmp_path_factory):
    """The oracle: one process (no launcher, no MPI), float64, two epochs of 256-image batches."""
    cwd = tmp_path_factory.mktemp("one")
    result = launch(wrapper, cwd, None, TRAIN + ["--out", "runs"], env={"T_FLOAT64": "1"})
    assert result.returncode == 0, result
    assert result.mpi == {0: False}, "a run in one process must not load MPI"
    folder = run_folder(cwd / "runs")
    assert weights(folder)["fc.weight"].dtype == np.float64
    return folder


# ---------------------------------------------------------------- in one process, no MPI

@pytest.mark.parametrize("world, batch", [(2, 100), (3, 99), (4, 1436)], ids=["2", "3", "4-short-last-batch"])
def test_the_shards_of_each_batch_make_up_one_process_batch_augmentation_included(world, batch):
    data = get_dataset("digits", train=True)
    info = data.info
    data.transform = _transforms("digits", info, True)[0]  # random crops: drawn from the loader's generator
    one = DataLoader(data, batch, shuffle=True, seed=(5, 1))
    parts = [DataLoader(data, batch, shuffle=True, seed=(5, 1), shard=(r, world)) for r in range(world)]
    assert all(len(p) == len(one) for p in parts)
    batches = [list(loader) for loader in [one] + parts]  # each loader's whole epoch
    for whole, *shards in zip(*batches):
        sizes = [s[1].shape[0] for s in shards]
        assert max(sizes) - min(sizes) <= 1, sizes
        np.testing.assert_array_equal(np.concatenate([s[0].numpy() for s in shards]), whole[0].numpy())
        np.testing.assert_array_equal(np.concatenate([s[1].numpy() for s in shards]), whole[1].numpy())
    if batch == 1436:  # 1437 = 1436 + 1: the last batch of one image leaves three ranks empty
        assert sizes == [0, 0, 0, 1]
    assert all(p.state_dict() == one.state_dict() for p in parts), "every rank's generator stays the same"


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), (0.0, 2), "01", (1,), (True, 2)])
def test_a_shard_must_be_a_rank_below_the_world(shard):
    data = get_dataset("digits", train=False)
    with pytest.raises(ValueError, match=r"shard must be \(rank, world\) with 0 <= rank < world"):
        DataLoader(data, 8, shard=shard)


def test_the_loader_gives_images_in_the_float_type_asked():
    data = get_dataset("digits", train=False)
    images, _ = next(iter(DataLoader(data, 8, dtype=np.float64)))
    assert images.numpy().dtype == np.float64
    with pytest.raises(ValueError, match="dtype must be a float type"):
        DataLoader(data, 8, dtype=np.int32)


@pytest.mark.parametrize("batch, world, such", [(30, 4, "28 or 32"), (129, 2, "128 or 130"), (3, 4, "such as 4,")])
def test_a_batch_the_ranks_cannot_share_evenly_is_refused_with_its_numbers(batch, world, such):
    config = train.TrainConfig(batch_size=batch)
    with pytest.raises(train.ConfigError) as caught:
        train.options.check_world(config, world)
    message = str(caught.value)
    assert "--batch-size" in message and f"{batch} is the global batch" in message
    assert f"over the {world} ranks" in message and such in message
    train.options.check_world(train.TrainConfig(batch_size=batch * world), world)  # a multiple is fine
    train.options.check_world(config, 1)


def test_plain_batch_norm_refuses_a_last_batch_that_leaves_a_rank_empty(tmp_path):
    # 1437 digits = 179 x 8 + 5: with 8 ranks and 8-image batches, three ranks would get none of the last
    run = train.Run.__new__(train.Run)
    run.world, run.rank = 8, 0  # _build is this rank's own work: it needs no other rank to refuse
    config = train.TrainConfig(model="resnet8", batch_size=8, out=str(tmp_path))
    with pytest.raises(train.ConfigError, match=r"last batch of an epoch holds 5 images .* fewer than the 8 "
                                                r"ranks.*--sync-bn"):
        run._build(config, progress=False)
    run._build(train.TrainConfig(model="resnet8", batch_size=8, sync_bn=True, out=str(tmp_path)), progress=False)
    assert os.listdir(tmp_path) == []


def test_sync_bn_in_a_process_started_alone_is_refused_and_loads_no_mpi(tmp_path, capsys, monkeypatch):
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    joined = []
    monkeypatch.setattr(distributed, "init", lambda *args, **kwargs: joined.append(1) or 1)
    code = cli.main(["train", "--sync-bn", "--model", "resnet8", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--sync-bn" in err and "mpiexec" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == [] and joined == [], "refused before MPI is started"


def test_the_help_documents_sync_bn(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--sync-bn" in text and "global batch" in text and "mpiexec -n N" in text


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_the_degradation_runs_are_spread_over_the_ranks_once_each(world):
    names = [f"{kind}{d}" for d in (8, 20, 56) for kind in ("plain", "resnet")]
    shares = experiments.spread(names, world)
    assert len(shares) == world and sorted(n for s in shares for n in s) == sorted(names)
    assert all(s == [n for n in names if n in s] for s in shares), "each share in the recipe's order"
    loads = [sum(int(n.lstrip("plainresnet")) for n in s) for s in shares]
    if world == 2:
        assert loads == [84, 84]
    if world == 4:
        assert sorted(loads) == [28, 28, 56, 56]


# ---------------------------------------------------------------- on real ranks

def _check_one_writer(result, ranks, folder):
    assert sorted(result.exits) == list(range(ranks)) and set(result.exits.values()) == {0}, result
    for r in range(1, ranks):
        assert result.writes[r] == [], f"rank {r} wrote {result.writes[r]}"
        assert [line for line in result.out.get(r, []) if not line.startswith("EXIT ")] == [], result
    assert any(folder.split(os.sep)[-1] in w for w in result.writes[0]), "rank 0 wrote the run folder"
    assert sorted(os.listdir(folder)) == sorted(train.RUN_FILES), "no temporary file left behind"
    epochs = [line for line in result.out[0] if line.startswith("epoch ")]
    assert len(epochs) == 2 and sum(line.startswith("done:") for line in result.out[0]) == 1


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_with_sync_bn_take_the_steps_of_one_process_and_rank_0_alone_writes(ranks, wrapper, tmp_path,
                                                                                   one_process):
    result = launch(wrapper, tmp_path, ranks, TRAIN + ["--sync-bn", "--out", "runs"],
                    env={"T_FLOAT64": "1", "T_AUDIT": "1"})
    assert result.returncode == 0, result
    folder = run_folder(tmp_path / "runs")
    _check_one_writer(result, ranks, folder)
    assert worst(weights(folder), weights(one_process)) < 1e-12
    assert close(history(folder), history(one_process))
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["sync_bn"] is True


@needs_mpi
def test_without_sync_bn_each_rank_normalises_its_own_part(wrapper, tmp_path, one_process):
    result = launch(wrapper, tmp_path, 2, TRAIN + ["--out", "runs"], env={"T_FLOAT64": "1"})
    assert result.returncode == 0, result
    folder = run_folder(tmp_path / "runs")
    assert 1e-4 < worst(weights(folder), weights(one_process)) < 1, "the statistics of half a batch differ"


@needs_mpi
def test_a_run_resumes_with_another_number_of_ranks_as_if_never_stopped(wrapper, tmp_path, one_process):
    first = launch(wrapper, tmp_path, 2, TRAIN + ["--sync-bn", "--out", "runs"],
                   env={"T_FLOAT64": "1", "T_UNTIL": "1"})
    assert first.returncode == 0, first
    folder = run_folder(tmp_path / "runs")
    assert "model.npz" not in os.listdir(folder) and len(history(folder)) == 1
    alone = str(tmp_path / "copy")
    shutil.copytree(folder, alone)
    four = launch(wrapper, tmp_path, 4, ["train", "--resume", folder, "--quiet"], env={"T_FLOAT64": "1"})
    assert four.returncode == 0 and set(four.exits.values()) == {0}, four
    assert any("resuming" in line and "after epoch 1" in line for line in four.out[0])
    one = launch(wrapper, tmp_path, None, ["train", "--resume", alone, "--quiet"], env={"T_FLOAT64": "1"})
    assert one.returncode == 0 and one.mpi == {0: False}, one
    for resumed in (folder, alone):  # 2 ranks, then 4; 2 ranks, then one process
        assert worst(weights(resumed), weights(one_process)) < 1e-12
        assert close(history(resumed), history(one_process))


@needs_mpi
def test_a_failure_on_one_rank_ends_every_rank_at_once_with_its_message(wrapper, tmp_path):
    crashed = tmp_path / "crashed_at"
    result = launch(wrapper, tmp_path, 4, TRAIN + ["--sync-bn", "--out", "runs"],
                    env={"T_CRASH_RANK": "1", "T_CRASH_FILE": str(crashed)})
    ended = time.time()
    assert result.returncode != 0, result
    assert result.says("rank 1: minires train: error: the disk of rank 1 is full (simulated)") == [1], result
    assert result.exits == {}, "no rank went on to finish normally"
    assert ended - float(crashed.read_text()) < 15, "the other ranks were not ended promptly"
    assert "model.npz" not in os.listdir(run_folder(tmp_path / "runs"))


def _refused(result, ranks, status, *culprits):
    """Every rank exited with ``status``; rank 0 alone printed the error, naming every culprit."""
    assert result.exits == {r: status for r in range(ranks)}, result
    errors = [line for line in result.err.get(0, []) if " error: " in line]
    assert len(errors) == 1 and all(c in errors[0] for c in culprits), result
    assert all(r == 0 for r in result.err if r is not None), "only rank 0 prints"
    assert "Traceback" not in result.proc.stderr


@needs_mpi
@pytest.mark.parametrize("case", ["batch-not-divided", "no-mpi4py", "options-differ", "models-differ",
                                  "one-rank-refused", "one-rank-unparsable", "diverged"])
def test_bad_input_under_mpiexec_stops_every_rank_with_one_message(case, wrapper, tmp_path):
    base = ["train", "--model", "resnet8", "--quiet", "--out", "runs"]
    if case == "batch-not-divided":
        result = launch(wrapper, tmp_path, 2, base + ["--batch-size", "129"])
        _refused(result, 2, 2, "--batch-size", "129 is the global batch", "2 ranks", "128 or 130")
    elif case == "no-mpi4py":
        result = launch(wrapper, tmp_path, 2, base + ["--sync-bn"], env={"T_NO_MPI4PY": "1"})
        _refused(result, 2, 1, "one of 2 ranks", "mpi4py is not installed", "pip install 'minires[mpi]'")
    elif case == "options-differ":
        result = launch(wrapper, tmp_path, 2, base + ["--lr", "0.1"], base + ["--lr", "0.2"])
        _refused(result, 2, 2, "the ranks disagree", "rank 1 has lr (--lr) 0.2 (rank 0: 0.1)")
    elif case == "models-differ":
        result = launch(wrapper, tmp_path, 2, base, ["train", "--model", "plain8", "--quiet", "--out", "runs"])
        _refused(result, 2, 2, "the ranks disagree", "--model", "'plain8'", "'resnet8'")
    elif case == "one-rank-refused":
        result = launch(wrapper, tmp_path, 2, base, base + ["--batch-size", "0"])
        _refused(result, 2, 2, "rank 1: ", "--batch-size", "got 0")
    elif case == "one-rank-unparsable":
        result = launch(wrapper, tmp_path, 2, base, base + ["--bogus"])
        _refused(result, 2, 2, "rank 1: ", "unrecognized arguments: --bogus")
    else:  # found in the loss summed over the ranks: every rank stops at the same step
        result = launch(wrapper, tmp_path, 2, base + ["--lr", "1e6", "--sync-bn"])
        _refused(result, 2, 1, "training diverged in epoch 1, step", "--lr", "No checkpoint was written")
        assert os.listdir(run_folder(tmp_path / "runs")) == ["config.json"]
        return
    assert not (tmp_path / "runs").exists() or os.listdir(tmp_path / "runs") == [], "nothing written"


@needs_mpi
def test_the_degradation_experiment_over_two_ranks_writes_what_one_process_writes(wrapper, tmp_path):
    args = ["experiment", "degradation", "--depths", "8", "--epochs", "1", "--batch-size", "256", "--quiet"]
    one = launch(wrapper, tmp_path, None, args + ["--out", "one"])
    two = launch(wrapper, tmp_path, 2, args + ["--out", "two"], env={"T_AUDIT": "1"})
    assert one.returncode == 0 and two.returncode == 0 and two.exits == {0: 0, 1: 0}, (one, two)
    a, b = run_folder(tmp_path / "one"), run_folder(tmp_path / "two")
    for name in ("degradation.csv", "degradation.json"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    assert sorted(os.listdir(b)) == ["degradation.csv", "degradation.json", "degradation.png", "plain8", "resnet8"]
    # the runs are spread: plain8 on rank 0, resnet8 on rank 1, which writes its run's folder and nothing else
    mine = os.path.join(os.path.basename(b), "resnet8")
    here = [w for w in two.writes[1] if not os.path.isabs(w) or w.startswith(str(tmp_path))]  # not ~/.config
    assert here and [w for w in here if mine not in w] == [], two.writes[1]
    assert sorted(os.listdir(os.path.join(b, "resnet8"))) == sorted(train.RUN_FILES)
    assert any(line.startswith("resnet8: final training error") and "on rank 1" in line for line in two.out[0])
    assert [line for line in two.out[1] if not line.startswith(("EXIT ", "WROTE "))] == [], "rank 0 alone prints"
