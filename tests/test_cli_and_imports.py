"""The CLI end to end on synthetic data, and the rule that the core never imports Streamlit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_core.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_core_does_not_import_streamlit():
    code = (
        "import sys, pkgutil, importlib, mtl_core\n"
        "names = [m.name for m in pkgutil.walk_packages(mtl_core.__path__, 'mtl_core.')]\n"
        "for name in names:\n"
        "    if not name.endswith('__main__'): importlib.import_module(name)\n"
        "print(len(names), 'streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    n, imported = out.stdout.split()
    assert int(n) >= 30 and imported == "False"  # every module of every package was imported


ENGINE = ("tasks", "data", "config", "models", "weighting", "training.loop", "training.steps", "metrics", "predict",
          "checkpoint", "export", "analysis", "reference")  # fmt: skip


def test_the_engine_knows_no_store_and_no_queue():
    """The one-way shape: the engine (tasks, data, models, config, training, weighting, metrics, predict)
    imports nothing from mtl_core.store or mtl_core.jobs, so it trains as well from a notebook."""
    code = (
        "import sys, importlib\n"
        f"for name in {ENGINE!r}: importlib.import_module('mtl_core.' + name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mtl_core.store', 'mtl_core.jobs'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_train_writes_json_summary_and_model(tmp_path, capsys):
    js, model = tmp_path / "s.json", tmp_path / "m.safetensors"
    rc = main(
        ["train", "--model", "stl", "--data", "synthetic", "--epochs", "2", "--json", str(js), "--save", str(model)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "epoch   1" in printed and "epoch   2" in printed
    summary = json.loads(js.read_text())
    assert summary["model"] == "stl" and summary["params"] == 104_706
    assert {"train_seconds", "best_epoch", "best", "best_avg", "history"} <= set(summary)
    assert len(summary["history"]) == 2 and 0 <= summary["best"]["even"] <= 1
    assert model.stat().st_size > 100_000


def test_bad_arguments_give_a_reason_not_a_traceback(capsys):
    assert main(["train", "--model", "hard", "--epochs", "0", "--data", "synthetic"]) == 2
    assert "epochs must be a whole number" in capsys.readouterr().err


def test_compare_prints_the_reference_beside_ours(capsys):
    assert main(["compare", "--data", "synthetic", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("stl", "hard", "cross_stitch"):
        assert name in out
    assert "771.1" in out and "98.51%" in out and "104,706" in out and "52,386" in out


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_submit_queues_through_the_job_runner_and_writes_what_train_writes(tmp_path, executor):
    """`submit --wait --json` on each backend: the run goes through the store's queue (a run id, the
    epochs as they land) and the summary has the fields `train --json` has. Ray: a local instance."""
    if executor == "ray":
        pytest.importorskip("ray")
    js = tmp_path / "s.json"
    env = dict(os.environ, MTL_HOME=str(tmp_path / "home"), MTL_WORKERS="1")
    cmd = [sys.executable, "-m", "mtl_core", "submit", "--executor", executor, "--model", "hard", "--data", "synthetic",
           "--epochs", "2", "--wait", "--json", str(js)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"the {executor} backend" in out.stdout and "epoch   2" in out.stdout
    summary = json.loads(js.read_text())
    assert summary["status"] == "finished" and summary["params"] == 52_386 and len(summary["history"]) == 2
    assert {"train_seconds", "best_epoch", "best", "best_avg", "history", "config"} <= set(summary)
    assert 0 <= summary["best"]["even"] <= 1 and Path(summary["weights"]).exists()
    assert Path(summary["weights"]).parent == tmp_path / "home" / "models"


def test_train_over_seeds_with_a_validation_split_weighting_and_probes_in_the_json(tmp_path, capsys):
    js = tmp_path / "s.json"
    args = ["train", "--model", "hard", "--data", "synthetic", "--epochs", "2", "--seeds", "2", "--val-split", "100",
            "--weighting", "uncertainty", "--conflict", "--affinity", "--json", str(js),
            "--save", str(tmp_path / "m.safetensors")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[seed 0] epoch   1" in out and "[seed 1] epoch   2" in out and "over seeds 0, 1: best avg" in out
    assert (tmp_path / "m-seed0.safetensors").exists() and (tmp_path / "m-seed1.safetensors").exists()
    payload = json.loads(js.read_text())
    runs, agg = payload["runs"], payload["aggregate"]
    assert [r["seed"] for r in runs] == [0, 1] == agg["seeds"]
    assert agg["best_avg"]["mean"] == pytest.approx((runs[0]["best_avg"] + runs[1]["best_avg"]) / 2)
    assert agg["best_avg"]["std"] == pytest.approx(abs(runs[0]["best_avg"] - runs[1]["best_avg"]) / 2**0.5)
    for r in runs:
        assert r["selected_on"] == "validation" and r["config"]["val_split"] == 100
        assert r["config"]["loss_weighting"] == "uncertainty"
        for rec in r["history"]:
            assert rec["split"] == "validation"
            assert set(rec["weights"]) == {"even", "mult3"} and all(w > 0 for w in rec["weights"].values())
            assert set(rec["grad_cosine"]) == {"even|mult3"} and -1 <= rec["grad_cosine"]["even|mult3"] <= 1
            assert set(rec["affinity"]) == {"even", "mult3"}
            assert all(set(row) == {"even", "mult3"} for row in rec["affinity"].values())
            assert rec["affinity"]["even"]["mult3"] == rec["conflict"]["affinity"]["even|mult3"]


def test_train_without_probes_records_none_and_help_lists_the_weightings(tmp_path, capsys):
    js = tmp_path / "s.json"
    assert main(["train", "--model", "hard", "--data", "synthetic", "--epochs", "1", "--json", str(js)]) == 0
    rec = json.loads(js.read_text())["history"][0]
    assert rec["conflict"] is None and "grad_cosine" not in rec and rec["weights"] == {"even": 1.0, "mult3": 1.0}
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in ("pcgrad", "mgda", "cagrad", "imtl_g", "aligned_mtl", "upgrad", "gradnorm", "famo", "dwa"):
        assert name in text
    for option in ("--val-split", "--seeds", "--conflict", "--affinity"):
        assert option in text


def test_submit_over_seeds_queues_one_job_per_seed(tmp_path):
    js = tmp_path / "s.json"
    env = dict(os.environ, MTL_HOME=str(tmp_path / "home"), MTL_WORKERS="2")
    cmd = [sys.executable, "-m", "mtl_core", "submit", "--model", "hard", "--data", "synthetic", "--epochs", "1",
           "--seeds", "2", "--seed", "5", "--val-split", "100", "--wait", "--json", str(js)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    payload = json.loads(js.read_text())
    assert [r["seed"] for r in payload["runs"]] == [5, 6] and payload["aggregate"]["best_avg"]["n"] == 2
    assert all(r["selected_on"] == "validation" and r["status"] == "finished" for r in payload["runs"])
    assert all("grad_cosine" in rec and "weights" in rec for r in payload["runs"] for rec in r["history"])
