"""benchmarks/run.py runs end to end (tiny settings) and writes the figures it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.mark.parametrize("torch_flag", [[], ["--no-torch"]], ids=["with-torch", "convnp-only"])
def test_benchmark_script_reports_every_figure(tmp_path, torch_flag):
    if not torch_flag:
        pytest.importorskip("torch")
    output = tmp_path / "results.json"
    arguments = ["--models", "bouvrie", "--windows", "1", "--steps", "2", "--no-scaling"]
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, *torch_flag, "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(output.read_text())
    assert 0 < report["import_seconds"] < 10
    (model,) = report["models"]
    assert model["model"] == "bouvrie" and model["batch_size"] == 50
    figures = model["convnp"]
    assert figures["train_images_per_s"] > 0 and figures["infer_images_per_s"] > 0
    assert figures["peak_rss_mb"] > 0
    assert [row["layer"].split("(")[0] for row in figures["layers"]][:2] == ["Conv2d", "Sigmoid"]
    if torch_flag:
        assert "torch" not in model
    else:
        assert model["torch"]["train_images_per_s"] > 0
        assert model["ratio_train_images_per_s"] == pytest.approx(
            figures["train_images_per_s"] / model["torch"]["train_images_per_s"]
        )
    assert "ratio" in completed.stdout or torch_flag


def test_memory_benchmark_reports_speed_rss_and_curves(tmp_path):
    """benchmarks/memory.py --quick, convnp alone: every figure is there and positive."""
    script = SCRIPT.parent / "memory.py"
    output = tmp_path / "memory.json"
    arguments = ["--quick", "--no-torch", "--threads", "1", "--json", str(output)]
    completed = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(output.read_text())
    assert [(row["side"], row["mode"]) for row in report["workloads"]] == [
        (32, "train"), (32, "infer"), (64, "train"), (64, "infer")
    ]  # fmt: skip
    for row in report["workloads"]:
        assert row["convnp"]["images_per_s"] > 0 and row["convnp"]["peak_rss_mb"] > 0
    curves = report["curves"]["frameworks"]["convnp"]
    assert all(value > 0 for value in curves["batch"].values())
    assert curves["mib_per_sample_32px"][0] > 0


def test_eval_inference_benchmark_reports_every_path(tmp_path):
    """benchmarks/eval_inference.py, tiny settings: each path's images/s is there and positive."""
    script = SCRIPT.parent / "eval_inference.py"
    output = tmp_path / "eval.json"
    arguments = ["--models", "bouvrie", "--batch", "20", "--repeats", "1", "--rounds", "1"]
    completed = subprocess.run(
        [sys.executable, str(script), *arguments, "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(output.read_text())["medians"]["after"]["bouvrie"]
    assert set(figures) == {
        "predict_in_blocks", "predict", "eval_forward_grad_kept", "eval_forward_input_gradient"
    }  # fmt: skip
    assert all(rate > 0 for rate in figures.values())


def test_mpi_benchmark_drives_every_configuration_in_rounds(tmp_path, monkeypatch):
    """benchmarks/distributed.py with tiny windows (and a slowed last rank): every
    configuration of the model times one window per round, the ratios, the efficiency's
    factors and memory figures come out, Allreduce and projection."""
    pytest.importorskip("torch")
    from convnp.runtime import distributed

    if not distributed.mpi_available():
        pytest.skip("needs mpi4py and mpiexec")
    output = tmp_path / "results-mpi.json"
    script = SCRIPT.with_name("distributed.py")
    arguments = ["--models", "bouvrie", "--windows", "2", "--steps", "2", "--seconds", "0.05",
                 "--slow-rank", "1"]  # fmt: skip
    completed = subprocess.run(
        [sys.executable, str(script), *arguments, "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    report = json.loads(output.read_text())
    configs = report["throughput"]["bouvrie"]
    assert set(configs) == {
        "convnp P=1", "convnp P=cores", "convnp balanced", "convnp threads", "torch", "torch DDP",
        "convnp P=1 slice", "convnp independent", "convnp P=cores weak",
    }  # fmt: skip
    cores = report["cores"]
    batches = {config: result["global_batch"] for config, result in configs.items()}
    assert batches["convnp P=cores weak"] == 50 * cores
    assert batches["convnp P=1 slice"] == 50 // cores
    assert {batches[config] for config in ("convnp P=1", "convnp P=cores", "torch DDP")} == {50}
    assert report["slow_rank_factor"] == 1
    for result in configs.values():
        assert len(result["windows"]) == 2
        assert all(window["images_per_s"] > 0 for window in result["windows"])
        assert result["peak_rss_mb_per_rank"] > 0 and result["pss_mb_per_rank"] > 0
    for config in ("convnp P=cores", "convnp balanced"):
        assert all("comm_ms_per_step" in window for window in configs[config]["windows"])
    assert set(report["allreduce_s"]) == {"1000", "10000", "100000", "1000000", "4000000"}
    assert report["projection"]["models"]["bouvrie"]["parameters"] == 3898
    assert "scaling efficiency of convnp balanced:" in completed.stdout
    # the three factors multiply to the efficiency, round by round
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from distributed import efficiency_factors, round_ratios

    efficiency = round_ratios(configs, "convnp P=cores", "convnp P=1", scale=cores)
    factors = efficiency_factors(configs, cores)
    assert list(factors) == ["batch split", "shared cores", "step sync"]
    products = [math.prod(values) for values in zip(*factors.values())]
    assert products == pytest.approx(efficiency, rel=1e-12)
    assert "= batch split" in completed.stdout
    assert "weak scaling efficiency (each rank on batch 50):" in completed.stdout
    assert "the last rank of each multi-rank job slowed to 1/2 of its speed" in completed.stdout


def test_mpi_benchmark_refuses_tta_only_without_a_target():
    """--tta-only skips the throughput part; without --tta-target it would measure nothing,
    so it is refused (it used to exit 0 with an empty report)."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("distributed.py")), "--tta-only"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "give --tta-target" in completed.stderr


def _rates(images_per_s: float) -> dict:
    return {"windows": [{"images_per_s": images_per_s}]}


def test_projection_counts_a_steps_fixed_cost(monkeypatch):
    """The many-machine projection fits a rank's step as t(n) = t0 + n·τ from one rank at
    the batch and at a rank's slice, so strong scaling pays t0 on every rank."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from distributed import CLUSTER_ALPHA_S, CLUSTER_BANDWIDTH_BPS, projection, step_time_model

    # batch 50 in 5 ms, a slice of 25 in 3.125 ms: τ = 75 µs a sample, t0 = 1.25 ms
    measured = {"convnp P=1": _rates(10_000.0), "convnp P=1 slice": _rates(8_000.0)}
    assert step_time_model(measured, 50, 2) == pytest.approx((1.25e-3, 75e-6), rel=1e-12)
    # a slice cheaper per sample than the batch (cache effects) fits no fixed cost
    faster_slice = {"convnp P=1": _rates(10_000.0), "convnp P=1 slice": _rates(12_000.0)}
    assert step_time_model(faster_slice, 50, 2) == pytest.approx((0.0, 1e-4), rel=1e-12)
    assert step_time_model(measured, 50, 1) == pytest.approx((0.0, 1e-4), rel=1e-12)

    plan = projection({"1000": 5e-6, "1000000": 1e-3}, {"bouvrie": 50}, {"bouvrie": measured}, 2)
    row = plan["models"]["bouvrie"]
    assert row["step_model"] == pytest.approx({"fixed_ms": 1.25, "per_sample_us": 75.0})
    message_bytes = 3898 * 4 + 50 * 10 * 4  # gradients and the batch's outputs
    allreduce = 14 * CLUSTER_ALPHA_S + 2 * 7 / 8 * message_bytes / CLUSTER_BANDWIDTH_BPS
    strong, weak = row["P=8 strong"], row["P=8 weak"]
    assert strong["compute_ms"] == pytest.approx(1e3 * (1.25e-3 + 6.25 * 75e-6))
    assert strong["allreduce_ms"] == pytest.approx(1e3 * allreduce)
    # the 8 ranks' images per second over 8 times one rank's
    one_rank = 50 / 5e-3
    ranks = 50 / (1.25e-3 + 6.25 * 75e-6 + allreduce)
    assert strong["efficiency"] == pytest.approx(ranks / (8 * one_rank))
    assert weak["efficiency"] == pytest.approx(5e-3 / (5e-3 + allreduce))
    assert strong["efficiency"] < weak["efficiency"]


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_distributed_benchmark_whole_runs_time_and_measure_both(tmp_path, monkeypatch):
    """The whole-run section trains one epoch both ways and reports the same model (float32
    rounding), the wall times, the largest process's peak RSS and the printed accuracy."""
    from convnp.runtime import distributed as runtime

    if not runtime.mpi_available():
        pytest.skip("needs mpi4py and mpiexec")
    monkeypatch.setenv("CONVNP_CACHE", str(tmp_path / "cache"))  # the decompressed copy
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import distributed

    results = distributed.whole_runs(["bouvrie"], 1, "fashion-mnist")
    (row,) = results["bouvrie"]["rounds"]
    for config in ("one process", "ranks"):
        assert row[config]["wall_s"] > 0
        # a Python process with NumPy and convnp alone takes more than 30 MB
        assert 30 < row[config]["peak_rss_mb"] < 1000
    assert row["one process"]["test_accuracy"] == row["ranks"]["test_accuracy"]
    assert row["max_weight_difference"] < 1e-5
