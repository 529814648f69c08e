"""minires bench: a quick run through the Python API and the command line, the records' fields, the FLOP counts,
and the malloc setting every measurement's child makes first.

Speed is what the benchmark measures, never what a test asserts: these tests
check the records' shape and arithmetic only. The multiply-add count comes
from a formula written here from the architecture, not from the code under test.
"""
import importlib.util
import json
import os
import platform
import statistics

import pytest

import minires
from minires import bench, cli, kernels
from minires.bench import worker

HAS_TORCH = importlib.util.find_spec("torch") is not None
FIELDS = {"workload", "framework", "backend", "device", "batch_size", "threads", "warmup", "repeat", "ms", "times_ms",
          "images_per_s", "flop", "gflop_per_s", "peak_mib", "blas", "time_ratio_vs_torch", "memory_ratio_vs_torch",
          "sgemm_peak", "fraction_of_sgemm_peak"}


def resnet20_macs(side=32):
    """Multiply-adds per image of the CIFAR ResNet-20: 3x3 convs of 16, 32, 64 filters, option-A shortcuts, fc."""
    total = side * side * 16 * 3 * 9                     # conv1
    cin = 16
    for stage, planes in enumerate((16, 32, 64)):
        side //= 1 if stage == 0 else 2
        for block in range(3):
            total += side * side * planes * cin * 9      # the block's first conv (strided at a stage start)
            total += side * side * planes * planes * 9   # its second conv
            cin = planes
    return total + 64 * 10                               # fc


def check_records(records, workload, batch, forward_passes, rounds=1, backends=("numpy",), device="cpu"):
    """Every record has the fields, consistent arithmetic, and ratios against the torch record when there is one."""
    assert records, "no records"
    for r in records:
        assert FIELDS <= set(r), f"missing fields {FIELDS - set(r)}"
        assert r["workload"] == workload and r["batch_size"] == batch and r["device"] == device
        assert r["rounds"] == rounds
        assert r["repeat"] == len(r["times_ms"]) == rounds * bench.QUICK_REPEAT
        assert r["ms"] == pytest.approx(statistics.median(r["times_ms"]))
        assert r["flop"] == 2 * forward_passes * resnet20_macs() * batch
        assert r["ms"] > 0 and r["peak_mib"] >= 0
        assert r["gflop_per_s"] == pytest.approx(r["flop"] / r["ms"] / 1e6)
        assert r["images_per_s"] == pytest.approx(batch / r["ms"] * 1e3)
    check_peak(records, device)
    minires_records = [r for r in records if r["framework"] == "minires"]
    assert [r["backend"] for r in minires_records] == list(backends)
    torch_records = [r for r in records if r["framework"] == "torch"]
    if not HAS_TORCH:
        assert not torch_records and all(r["time_ratio_vs_torch"] is None for r in minires_records)
        return
    (reference,) = torch_records
    for mine in minires_records:
        assert mine["time_ratio_vs_torch"] == pytest.approx(mine["ms"] / reference["ms"])
        if reference["peak_mib"] > 0:
            assert mine["memory_ratio_vs_torch"] == pytest.approx(mine["peak_mib"] / reference["peak_mib"])


def check_peak(records, device="cpu"):
    """One sgemm peak for the whole run, the best of its two measurements; every record's share of it."""
    peak = records[0]["sgemm_peak"]
    assert all(r["sgemm_peak"] == peak for r in records), "one peak for every record of a run"
    assert peak["gflop_per_s"] > 0 and peak["size"] == bench.peak.sgemm_size(device, quick=True)
    assert peak["gflop_per_s"] == max(peak["start_gflop_per_s"], peak["end_gflop_per_s"])
    assert peak["repeat"] == bench.peak.QUICK_REPEAT
    for r in records:
        assert r["fraction_of_sgemm_peak"] == pytest.approx(r["gflop_per_s"] / peak["gflop_per_s"])


def test_resnet20_multiply_adds_match_the_formula():
    assert resnet20_macs() == 40_551_040
    assert bench.macs_per_image(bench.WORKLOADS["resnet20_train"]) == resnet20_macs()
    assert bench.WORKLOADS["resnet20_train"].flop(4, resnet20_macs()) == 2 * 3 * 40_551_040 * 4


def test_conv_multiply_adds_match_the_formula():
    # 16 -> 32 channels, 3x3 stride 2 on 32x32: a 16x16 output
    assert bench.macs_per_image(bench.WORKLOADS["conv_fwd_16to32_32px_s2"]) == 16 * 16 * 32 * 16 * 9
    assert bench.macs_per_image(bench.WORKLOADS["conv_bwd_64to64_8px"]) == 8 * 8 * 64 * 64 * 9


def test_quick_run_through_the_api():
    records = bench.run_bench("resnet20_train", "numpy", batch_size=2, threads=1, quick=True)
    check_records(records, "resnet20_train", 2, forward_passes=3)
    mine = records[0]["blas"]
    assert mine.count("(") == mine.count("1 thread)") > 0, f"the child's BLAS runs the one thread it was given, " \
                                                           f"got {mine!r}"
    assert "resnet20_train" in bench.format_table(records)


def test_quick_run_through_the_command_line(capsys):
    assert cli.main(["bench", "--quick", "--workloads", "resnet20_eval", "--backend", "numpy",
                     "--batch-size", "2", "--threads", "1", "--json"]) == 0
    check_records(json.loads(capsys.readouterr().out), "resnet20_eval", 2, forward_passes=1)


def test_the_table_shows_each_share_of_the_sgemm_peak(capsys):
    """The heading names the peak and how it was measured; the table's "% sgemm" is 100 x the record's fraction."""
    assert cli.main(["bench", "--quick", "--workloads", "conv_fwd_3to16_32px", "--backend", "numpy",
                     "--batch-size", "2", "--threads", "1", "--no-torch"]) == 0
    captured = capsys.readouterr()
    heading, header, _, row = captured.out.strip().splitlines()
    assert "% sgemm = GFLOP/s as a percentage of the sgemm peak " in heading
    assert "NumPy's BLAS, 1 thread, 1024x1024 float32" in heading and "at the start of the run" in heading
    assert header.split()[6:8] == ["%", "sgemm"]
    values = row.split()
    gflops, percent = float(values[5]), float(values[6])
    peak = float(heading.split("the sgemm peak ")[1].split()[0])
    assert percent == pytest.approx(100 * gflops / peak, abs=0.1 + 100 * 0.01 / peak)
    assert sum(line.startswith("bench: sgemm 1024x1024") for line in captured.err.splitlines()) == 2, \
        "measured at the start and at the end"


def test_the_sgemm_child_times_one_product_on_the_threads_given():
    answer = worker.measure({"framework": "sgemm", "backend": "blas", "workload": "sgemm", "device": "cpu",
                             "size": 64, "repeat": 2, "threads": 1})
    assert len(answer["times_s"]) == 2 and all(t > 0 for t in answer["times_s"])
    assert answer["blas"].count("(") == answer["blas"].count("1 thread)") > 0, answer["blas"]


def test_the_peak_of_a_run_is_the_best_of_its_two_measurements():
    first = {"gflop_per_s": 80.0, "size": 2048, "repeat": 10, "blas": "b"}
    peak = bench.peak.combine(first, dict(first, gflop_per_s=120.0))
    assert (peak["gflop_per_s"], peak["start_gflop_per_s"], peak["end_gflop_per_s"]) == (120.0, 80.0, 120.0)
    records = [{"workload": "w", "backend": "numba", "batch_size": 1, "ms": 1.0, "images_per_s": 1.0,
                "gflop_per_s": 45.0, "peak_mib": 0.0, "time_ratio_vs_torch": None, "memory_ratio_vs_torch": None,
                "fraction_of_sgemm_peak": 45.0 / 120.0}]
    assert bench.format_table(records).splitlines()[2].split()[6] == "37.5"
    assert "sgemm peak 120.0 GFLOP/s (NumPy's BLAS, 2 threads, 2048x2048" in bench.peak.describe(peak, 2)


def test_rounds_pool_every_round_of_every_framework(capsys):
    """--rounds 2: each framework is measured twice, taking turns, and the record holds all the timed runs."""
    assert cli.main(["bench", "--quick", "--workloads", "resnet20_eval", "--backend", "numpy", "--batch-size", "2",
                     "--threads", "1", "--rounds", "2", "--json"]) == 0
    captured = capsys.readouterr()
    check_records(json.loads(captured.out), "resnet20_eval", 2, forward_passes=1, rounds=2)
    turns = [line.split()[2] for line in captured.err.splitlines()
             if line.startswith("bench: ") and not line.startswith("bench: sgemm")]
    frameworks = ["numpy", "torch"] if HAS_TORCH else ["numpy"]
    assert turns == frameworks * 2, f"expected the frameworks to take turns, got {turns}"


def test_children_drop_the_openblas_kernel_pins(monkeypatch):
    """OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE would make OpenBLAS run another CPU's kernels: the children drop them."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    answer = worker.measure({"framework": "minires", "backend": "numpy", "workload": "conv_fwd_3to16_32px",
                             "device": "cpu", "batch": 1, "threads": 1, "warmup": 0, "repeat": 1})
    assert "Haswell" not in answer["blas"] or _native_kernel() == "Haswell", answer["blas"]


def _native_kernel():
    """The OpenBLAS kernel a fresh process without the pins picks on this CPU."""
    import subprocess
    import sys
    code = "import numpy, threadpoolctl; print(threadpoolctl.threadpool_info()[0].get('architecture'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip()


@pytest.mark.parametrize("framework, backend", [
    ("minires", "numpy"),
    pytest.param("torch", "torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")),
])
def test_a_measurement_keeps_freed_memory_before_it_builds(monkeypatch, framework, backend):
    """Each child calls backend.keep_freed_memory first, as training does, whichever framework it times."""
    calls = []
    monkeypatch.setattr(minires.backend, "keep_freed_memory", lambda: calls.append("keep"))
    monkeypatch.setattr(kernels, "_forced", dict(kernels._forced))  # the worker forces a backend: undo it after
    case = f"{framework}_case"
    build = getattr(worker, case)
    monkeypatch.setattr(worker, case, lambda *args: calls.append("build") or build(*args))
    threads = 1
    if framework == "torch":
        import torch
        threads = torch.get_num_threads()  # the worker sets it: leave this process's as it is
    answer = worker.run({"framework": framework, "backend": backend, "workload": "conv_fwd_3to16_32px",
                         "device": "cpu", "batch": 1, "threads": threads, "warmup": 0, "repeat": 1})
    assert calls == ["keep", "build", "build"], "keep_freed_memory once, before the priming and the timed builds"
    assert len(answer["times_s"]) == 1 and answer["peak_kib"] >= 0


@pytest.mark.parametrize("args, message", [
    (["--workloads", "resnet21_train"], "unknown workload 'resnet21_train'"),
    (["--backend", "fortran"], "unknown kernel backend 'fortran'"),
    (["--workloads", "conv", "--repeat", "0"], "repeat must be at least 1"),
    (["--workloads", "conv", "--rounds", "0"], "rounds must be at least 1"),
    (["--backend", "cupy"], "kernel backend 'cupy' serves cuda arrays, not cpu ones"),
])
def test_bad_options_give_one_line(capsys, args, message):
    assert cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(minires.cuda.is_available(), reason="this machine has a GPU: the next test runs instead")
def test_device_cuda_without_a_gpu_says_what_is_missing(capsys):
    assert cli.main(["bench", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda needs CuPy and an NVIDIA GPU" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not minires.cuda.is_available(), reason="needs CuPy and a GPU")
def test_quick_run_on_the_gpu(capsys):
    """--device cuda: every GPU backend (and PyTorch on CUDA) times the step; the header names the GPU."""
    from minires import kernels
    gpu_backends = tuple(n for n, (_, serves, _) in kernels.BACKENDS.items()
                         if serves == "cuda" and kernels.available(n))
    assert "cupy" in gpu_backends
    assert cli.main(["bench", "--device", "cuda", "--quick", "--workloads", "resnet20_train", "--batch-size", "2",
                     "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "GPU " in out.splitlines()[0] and "TF32 off" in out.splitlines()[0]
    records = bench.run_bench("resnet20_train", None, batch_size=2, threads=1, quick=True, device="cuda")
    check_records(records, "resnet20_train", 2, forward_passes=3, backends=gpu_backends, device="cuda")
    assert all(r["peak_mib"] > 0 for r in records), "a GPU step allocates: its allocator's peak must show"


# ---------------------------------------------------------------- --isa avx2: an AVX2 machine's code on this CPU

def test_isa_avx2_keeps_every_framework_to_avx2():
    env = worker.isa_environment("avx2")
    assert (env["OPENBLAS_CORETYPE"], env["ATEN_CPU_CAPABILITY"], env["ONEDNN_MAX_CPU_ISA"]) == \
        ("Haswell", "avx2", "AVX2")
    if importlib.util.find_spec("llvmlite") is not None:
        features = env["NUMBA_CPU_FEATURES"].split(",")
        assert all(f[0] in "+-" for f in features) and "-avx512f" in features
        assert not [f for f in features if f.startswith(("+avx512", "+amx", "+avx10", "+evex512"))], features
    assert worker.isa_environment("native") == {} and worker.isa_environment(None) == {}
    with pytest.raises(ValueError, match="unknown --isa 'avx3'; choose one of native, avx2"):
        worker.isa_environment("avx3")
    assert worker.clean_environment(1, "avx2")["OPENBLAS_CORETYPE"] == "Haswell"
    assert "OPENBLAS_CORETYPE" not in worker.clean_environment(1)


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="needs numba")
def test_the_numba_register_tile_follows_numbas_features():
    """Under --isa avx2, Numba compiles without AVX-512, so the tile must use 32-byte vectors (16 registers)."""
    import subprocess
    import sys
    code = "from minires.kernels import numba_tile as t; print(t.VECTOR_BYTES, t.ROWS_1, t.ROWS_2, t.ROWS_4)"
    env = dict(os.environ, NUMBA_CPU_FEATURES=worker.isa_environment("avx2")["NUMBA_CPU_FEATURES"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["32", "12", "6", "2"], done.stderr[-2000:]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OpenBLAS's Haswell kernels are x86's")
def test_a_quick_avx2_run_says_so_and_runs_haswell_kernels(capsys):
    assert cli.main(["bench", "--quick", "--isa", "avx2", "--workloads", "conv_fwd_3to16_32px", "--backend",
                     "numpy", "--batch-size", "2", "--threads", "1", "--no-torch"]) == 0
    heading = capsys.readouterr().out.splitlines()[0]
    assert "code kept to AVX2 (--isa avx2" in heading and "(Haswell kernels, 1 thread)" in heading, heading


def test_isa_is_refused_with_ranks(capsys):
    assert cli.main(["bench", "--isa", "avx2", "--ranks", "1,2"]) == 2
    assert "--isa avx2 keeps the CPU's code to that instruction set" in capsys.readouterr().err
