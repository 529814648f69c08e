"""``minires bench --ranks``: the option, its errors, and a quick data-parallel run on 1 and 2 MPI ranks.

Speed is what the benchmark measures, never what a test asserts: the quick
run checks the records' fields, their arithmetic and that the values are sane
(positive throughput, efficiency in (0, 1.5), a communication share in [0, 1]),
and that each rank ran with the one thread it was given. Runs that need
mpi4py and ``mpiexec`` skip without them.
"""
import json
import statistics

import pytest

from minires import bench, cli, distributed
from minires.bench import ranks, worker

needs_mpi = pytest.mark.skipif(ranks.find_mpiexec() is None or not distributed.is_available(),
                               reason="needs mpi4py and mpiexec (pip install -e '.[mpi]')")
FIELDS = {"workload", "backend", "batch_size", "ranks", "threads", "repeat", "ms", "times_ms", "images_per_s",
          "gflop_per_s", "speedup", "speedup_vs_ranks", "efficiency", "comm_ms", "comm_share", "allreduce_ms",
          "gradient_mib", "buckets", "rank_ms", "cpu_share", "blas", "mpi"}


@pytest.mark.parametrize("text, counts", [("1,2", [1, 2]), ("2, 1,2", [1, 2]), ("4", [4])])
def test_rank_counts_parse_sorted_and_unique(text, counts):
    assert ranks.parse_ranks(text) == counts


@pytest.mark.parametrize("args, message", [
    (["--ranks", "two"], "--ranks expects a comma list of rank counts such as 1,2; got 'two'"),
    (["--ranks", "1,0"], "--ranks: a rank count must be at least 1, got 0 (in --ranks 1,0)"),
    (["--ranks", "1,-2"], "--ranks expects a comma list of rank counts such as 1,2; got '1,-2'"),
    (["--ranks", "1,3", "--batch-size", "8"], "--batch-size 8 does not split evenly over --ranks 3"),
    (["--ranks", "3"], "the global batch of resnet20_train, 128, does not split evenly over --ranks 3"),
    (["--ranks", "2", "--workloads", "resnet20_eval"],
     "--workloads resnet20_eval is not a training workload (choose from resnet20_train, resnet50_train)"),
    (["--ranks", "2", "--device", "cuda"], "--ranks measures ranks on the CPU; --device cuda is not supported"),
    (["--ranks", "2", "--threads", "0"], "--threads must be at least 1, got 0"),
])
def test_bad_ranks_options_give_one_line_naming_the_option(capsys, args, message):
    assert cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("missing", ["mpiexec", "mpi4py"])
def test_without_mpi_the_message_says_what_to_install(capsys, monkeypatch, missing):
    if missing == "mpiexec":
        monkeypatch.setattr(ranks, "find_mpiexec", lambda: None)
    else:
        monkeypatch.setattr(distributed, "is_available", lambda: False)
    assert cli.main(["bench", "--ranks", "1,2", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--ranks needs {missing}" in err and "pip install -e '.[mpi]'" in err and len(err.splitlines()) == 1


def test_the_children_get_their_threads_and_no_blas_pins(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    monkeypatch.setenv("MINIRES_KERNELS", "numba")
    env = ranks.child_environment(1)
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env and "MINIRES_KERNELS" not in env
    assert all(env[v] == "1" for v in worker.THREAD_VARIABLES)


def check_ranks_records(records, counts, batch, backends=("numpy",), rounds=1):
    assert [(r["backend"], r["ranks"]) for r in records] == [(b, n) for b in backends for n in counts]
    for r in records:
        assert FIELDS <= set(r), f"missing fields {FIELDS - set(r)}"
        assert r["workload"] == "resnet20_train" and r["batch_size"] == batch and r["threads"] == 1
        assert r["rounds"] == rounds and r["repeat"] == len(r["times_ms"]) == rounds * bench.QUICK_REPEAT
        assert r["ms"] == pytest.approx(statistics.median(r["times_ms"]))
        assert r["images_per_s"] > 0 and r["images_per_s"] == pytest.approx(batch / r["ms"] * 1e3)
        # a quick run on a tiny batch is noisy on a shared machine: 1.6 was seen; the arithmetic is what counts
        assert 0 < r["efficiency"] < 3 and r["efficiency"] == pytest.approx(r["speedup"] / r["ranks"])
        assert 0 <= r["comm_share"] <= 1 and r["comm_ms"] >= 0 and 0 < r["cpu_share"] < 1.5
        assert len(r["rank_ms"]) == r["ranks"], "one list of step times per rank"
        # the slowest rank ends the step
        assert r["times_ms"] == pytest.approx([max(steps) for steps in zip(*r["rank_ms"])], abs=0.01)
        assert r["blas"].count("(") == r["blas"].count("1 thread)") > 0, f"one BLAS thread a rank, got {r['blas']}"
        assert r["gradient_mib"] == pytest.approx(resnet20_parameters() * 4 / 2 ** 20)  # float32 gradients
    one, two = [r for r in records if r["backend"] == backends[0]]
    assert one["speedup"] == 1 and one["speedup_vs_ranks"] == 1 and one["comm_share"] == 0
    assert two["speedup"] == pytest.approx(two["images_per_s"] / one["images_per_s"])
    assert two["allreduce_ms"] > 0 and one["allreduce_ms"] == 0


def resnet20_parameters():
    """CIFAR ResNet-20 from the architecture: 3x3 convs without bias, batch norm (weight, bias), option-A shortcuts."""
    total, cin = 3 * 16 * 9 + 2 * 16, 16                    # conv1, bn1
    for planes in (16, 32, 64):
        for _ in range(3):
            total += (cin * planes + planes * planes) * 9 + 4 * planes
            cin = planes
    return total + 64 * 10 + 10                              # fc


def test_resnet20_has_the_parameter_count_the_check_uses():
    from minires import models
    assert resnet20_parameters() == 269_722  # the paper's "0.27M"
    assert sum(p.data.size for p in models.get("resnet20").parameters()) == resnet20_parameters()


@needs_mpi
def test_quick_run_on_one_and_two_ranks_through_the_api():
    records = ranks.run_ranks("1,2", "resnet20_train", "numpy", batch_size=4, quick=True, rounds=2)
    check_ranks_records(records, [1, 2], 4, rounds=2)


@needs_mpi
def test_quick_run_on_one_and_two_ranks_through_the_command_line(capsys):
    assert cli.main(["bench", "--ranks", "2,1", "--quick", "--backend", "numpy", "--batch-size", "4",
                     "--json"]) == 0
    captured = capsys.readouterr()
    check_ranks_records(json.loads(captured.out), [1, 2], 4)
    logged = [line.split()[4] for line in captured.err.splitlines() if line.startswith("bench: resnet20")]
    assert logged == ["1", "2"], f"a line per rank count as it finishes, got {logged}"
    assert cli.main(["bench", "--ranks", "1,2", "--quick", "--backend", "numpy", "--batch-size", "4",
                     "--rounds", "2"]) == 0
    captured = capsys.readouterr()
    turns = [line.split()[4] for line in captured.err.splitlines() if line.startswith("bench: resnet20")]
    assert turns == ["1", "2", "1", "2"], f"the rank counts take turns, got {turns}"
    out = captured.out.splitlines()
    assert "1 thread(s) per rank" in out[0] and "BLAS " in out[0]
    assert out[1].split()[:4] == ["workload", "backend", "ranks", "batch"] and "efficiency" in out[1]
    assert [line.split()[2] for line in out[3:]] == ["1", "2"]
