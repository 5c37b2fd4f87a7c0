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
        "for m in pkgutil.iter_modules(mtl_core.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('mtl_core.' + m.name)\n"
        "print('streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


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


def test_bench_takes_its_own_options_first(monkeypatch):
    """`python -m mtl_core bench --no-cnn` once failed in argparse before the benchmark saw it."""
    from mtl_core import bench, cli

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--no-cnn", "--no-table"]) == 0
    assert seen == [["--no-cnn", "--no-table"]]


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
