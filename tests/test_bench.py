"""The benchmark's own arithmetic: FLOPs per epoch against a hand count, the GEMM probe, the floor,
the verdict, and one quick run of the whole command on synthetic data."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import speed as bench
from mtl_core.config import TrainConfig
from mtl_core.models import IN_FEATURES, MLP_HIDDEN, head_dim
from mtl_core.training.loop import Training


def test_hard_sharing_flops_equal_a_hand_count():
    h1, h2 = MLP_HIDDEN
    outputs = sum(head_dim(t, "mlp") for t in TrainConfig.preset("hard").tasks)  # one logit per binary task
    first = IN_FEATURES * h1  # multiply-adds per digit, forward
    rest = h1 * h2 + h2 * outputs
    # The first layer: forward and weight gradient (the images need no gradient); the others:
    # forward, weight gradient and input gradient, 3x forward. 2 FLOPs per multiply-add.
    per_digit = 2 * (2 * first + 3 * rest)
    assert bench.flops_per_epoch("hard", 1000) == pytest.approx(per_digit * 1000)


def test_flops_scale_with_the_digits_not_the_batch():
    one = bench.flops_per_epoch("hard", 1000)
    assert bench.flops_per_epoch("hard", 3000) == pytest.approx(3 * one)
    assert bench.flops_per_epoch("hard", 1000, batch_size=64) == pytest.approx(one)


def test_flops_rank_the_models():
    hard, stl, cross = (bench.flops_per_epoch(m, 1000) for m in ("hard", "stl", "cross_stitch"))
    # Two columns: twice hard's first layer, which is almost all of either model's products.
    assert 1.9 < stl / hard < 2.05
    assert stl < cross < 1.02 * stl  # the alpha mixing is counted, and small
    assert bench.flops_per_epoch("cnn", 1000) > 10 * stl


def test_bf16_part_is_the_mlp_first_layer(synthetic):
    n = synthetic.n_train
    flops = bench.flops_per_epoch("hard", n)
    bf16 = Training(TrainConfig.preset("hard", epochs=1, precision="bf16"), synthetic)
    fp32 = Training(TrainConfig.preset("hard", epochs=1, precision="fp32"), synthetic)
    assert bench.bf16_flops_per_epoch(bf16, flops) == 2 * 2 * IN_FEATURES * MLP_HIDDEN[0] * n
    assert bench.bf16_flops_per_epoch(fp32, flops) == 0.0


def test_peak_gflops_is_a_rate_and_threads_come_back():
    before = torch.get_num_threads()
    for dtype in (torch.float32, torch.bfloat16):
        rate = bench.peak_gflops(1, dtype, seconds_per_shape=0.02)
        assert rate > 0 and math.isfinite(rate)
    assert torch.get_num_threads() == before


def test_floor_seconds():
    peak = {"fp32": 100.0, "bf16": 400.0}
    assert bench.floor_seconds(2e9, 0.0, peak) == pytest.approx(0.02)
    assert bench.floor_seconds(2e9, 1e9, peak) == pytest.approx(0.01 + 0.0025)
    assert bench.floor_seconds(2e9, 1e9, {"fp32": 100.0, "bf16": None}) == pytest.approx(0.02)


def test_verdict_marks_each_goal():
    best = {"stl": ("auto", 25.0), "hard": ("fp32", 24.9), "cross_stitch": ("auto", 16.8), "cnn": ("bf16", 3.2)}
    lines = bench.verdict(best, 30.0)
    assert lines[0] == "stl auto: 25.0x (goal >= 25x) PASS"
    assert lines[1] == "hard fp32: 24.9x (goal >= 25x) MISS"
    assert lines[2] == "cross_stitch auto: 16.8x (goal >= 25x) MISS"
    assert lines[3] == "seed table: 30.0 s (goal <= 30 s) PASS"
    assert lines[4].startswith("cnn bf16: 3.2x (goal >= 3x) PASS") and "--accuracy" in lines[4]
    assert bench.verdict(best, 30.1)[3].endswith("MISS")
    short = bench.verdict({"cnn": ("fp32", 2.9)}, None)
    assert short[3] == "seed table: not run (--no-table)"
    assert short[4].startswith("cnn fp32: 2.9x (goal >= 3x) MISS")
    assert bench.verdict({}, None)[0] == "stl: not measured"
    assert bench.verdict({}, None)[-1] == "cnn: not measured (--no-cnn)"


def test_quick_run_prints_every_section_and_a_verdict(capsys):
    before = torch.get_num_threads()
    assert bench.main(["--data", "synthetic", "--seed-batches", "2", "--no-table", "--no-cnn"]) == 0
    out = capsys.readouterr().out
    assert "GEMM probe peak" in out and "x floor" in out
    assert "one vs two threads" in out and "picked per chunk" in out
    for m in ("stl", "hard", "cross_stitch"):
        assert sum(line.startswith(f"  {m} ") and line.rstrip().endswith(("PASS", "MISS")) for line in out.splitlines())
    assert "seed table: not run" in out and "cnn: not measured" in out
    assert torch.get_num_threads() == before


def test_the_seed_table_on_the_worker_pool_trains_all_three_side_by_side(tmp_path, monkeypatch):
    """The dashboard's way: the three seed-table runs queued at once on the pool of worker processes."""
    from benchmarks.speed import pool_seed_table

    monkeypatch.setenv("MTL_HOME", str(tmp_path))
    wall, runs = pool_seed_table("synthetic", epochs=1, workers=2)
    assert wall > 0
    assert [r["model"] for r in runs] == ["stl", "hard", "cross_stitch"]
    assert all(r["status"] == "finished" and r["best_avg"] is not None for r in runs)
    assert all(r["label"] == f"seed table {r['model']}" for r in runs)


def test_the_accuracy_check_trains_both_pipelines_by_the_recipe(real_data):
    data = real_data.limited(n_train=3000, n_test=1000)
    results = bench.accuracy_check(data, seeds=1, epochs=2)
    assert list(results) == [name for name, _ in bench.ACCURACY_PIPELINES]
    digits = [r["final"][0] for r in results.values()]
    # Two epochs on 3,000 real digits: every pipeline learns the digits, and they learn them alike. The
    # embedded subset (a clone without ../shared) gives about 0.75 for every pipeline after the same two epochs.
    floor = 0.85 if data.source == "mnist" else 0.65
    assert min(digits) > floor, digits
    assert max(digits) - min(digits) < 0.05, digits
    for r in results.values():
        assert r["best"][0] >= floor and floor < r["avg"][0] <= 1.0


def test_the_accuracy_check_takes_a_seed_range_and_a_choice_of_our_pipelines(real_data, capsys):
    data = real_data.limited(n_train=1000, n_test=300)
    results = bench.accuracy_check(data, seeds=2, epochs=1, first_seed=5, pipelines=("ours auto",))
    assert list(results) == ["seed-faithful", "ours auto"]  # the seed-faithful pipeline always runs
    assert all(len(r["final"]) == 2 for r in results.values())
    printed = capsys.readouterr().out
    assert "seed 5 ours auto" in printed and "seed 6 seed-faithful" in printed and "seed 4" not in printed


def test_the_seed_faithful_run_keeps_its_best_and_last_epochs(real_data):
    run = bench.seed_faithful_run("hard", real_data.limited(n_train=2000, n_test=500), seed=0, epochs=3)
    assert run["last"]["epoch"] == 3 and 1 <= run["best"]["epoch"] <= 3
    assert run["best"]["avg_acc"] >= run["last"]["avg_acc"] > 0.8


def test_the_accuracy_lines_give_mean_std_and_the_verdict():
    results = {
        "seed-faithful": {"final": [0.991, 0.990], "best": [0.992, 0.990], "avg": [0.993, 0.992]},
        "ours fp32": {"final": [0.994, 0.992], "best": [0.994, 0.992], "avg": [0.994, 0.993]},
        "ours auto": {"final": [0.990, 0.989], "best": [0.990, 0.990], "avg": [0.992, 0.991]},
    }
    lines = bench.accuracy_lines(results)
    assert lines[0] == (
        "seed-faithful  digit after the last epoch 99.05 ± 0.07%, at the best epoch 99.10 ± 0.14%, "
        "best avg 99.25 ± 0.07% (2 seeds)"
    )
    assert lines[3] == (
        "ours fp32: digit 99.30% after the last epoch (goal >= 99.2%) PASS; against the seed-faithful pipeline "
        "on the same seeds (difference ± two standard errors): after the last epoch +0.25 ± 0.22 pp (beyond), "
        "at the best epoch +0.20 ± 0.28 pp (within), best avg +0.10 ± 0.14 pp (within)"
    )
    assert lines[4].startswith("ours auto: digit 98.95% after the last epoch (goal >= 99.2%) MISS")
    assert "after the last epoch -0.10 ± 0.14 pp (within)" in lines[4]
    one_seed = {name: {k: v[:1] for k, v in r.items()} for name, r in results.items()}
    assert "after the last epoch -0.10 pp, at the best" in bench.accuracy_lines(one_seed)[4]  # no spread: no error


def test_the_gpu_check_says_so_where_there_is_no_gpu(capsys):
    import importlib.util
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: benchmarks/gpu_check.py would train on it")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
