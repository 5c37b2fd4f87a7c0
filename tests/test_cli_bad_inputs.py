"""The command line's bad-input corpus: bad paths, numbers, names and environment settings. Every case ends
with a non-zero exit and one sentence on stderr, never a traceback, and before anything is trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_core.checkpoint import save_model
from mtl_core.cli import main
from mtl_core.config import TrainConfig
from mtl_core.models import build_model

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--data", "synthetic", "--epochs", "1", "--max-batches", "1"]
TRAIN = ["train", "--model", "hard", *QUICK]
SUBMIT = ["submit", "--model", "hard", *QUICK]
COMPARE = ["compare", "--data", "synthetic", "--epochs", "1", "--max-batches", "1"]

# name -> (command line with {tmp} for the test's folder, {model} for a good model file; environment; words)
CASES = {
    # output paths: checked before training, so no finished work is lost (missing folders are made)
    "--json under a file": (TRAIN + ["--json", "{tmp}/a-file/out.json"], {}, "a-file is not a folder"),
    "--save under a file": (TRAIN + ["--save", "{tmp}/a-file/deeper/m.safetensors"], {}, "a-file is not a folder"),
    "--json is a folder": (TRAIN + ["--json", "{tmp}"], {}, "it is a folder"),
    "--save is a folder": (TRAIN + ["--save", "{tmp}"], {}, "it is a folder"),
    "--json with --seeds": (TRAIN + ["--seeds", "2", "--json", "{tmp}/a-file/out.json"], {}, "is not a folder"),
    "compare --json under a file": (COMPARE + ["--json", "{tmp}/a-file/t.json"], {}, "is not a folder"),
    "submit --json is a folder": (SUBMIT + ["--json", "{tmp}"], {}, "it is a folder"),
    "export --out under a file": (
        ["export", "{model}", "--format", "onnx", "--out", "{tmp}/a-file/m.onnx"], {}, "is not a folder"),
    "export --out is a folder": (["export", "{model}", "--format", "onnx", "--out", "{tmp}"], {}, "it is a folder"),
    "an output name too long": (TRAIN + ["--json", "{tmp}/" + "x" * 5000 + ".json"], {}, "name too long"),
    # input files
    "export a missing model file": (
        ["export", "{tmp}/none.safetensors", "--format", "onnx", "--out", "{tmp}/m.onnx"], {}, "No such file"),
    "export a folder as the model": (
        ["export", "{tmp}", "--format", "onnx", "--out", "{tmp}/m.onnx"], {}, "it is a folder, not a model file"),
    "export a text file as the model": (
        ["export", "{tmp}/a-file", "--format", "onnx", "--out", "{tmp}/m.onnx"], {}, "not a model"),
    "export to an unknown format": (["export", "{model}", "--format", "tflite", "--out", "{tmp}/m"], {}, "tflite"),
    # numbers
    "epochs not a number": (["train", "--model", "hard", "--epochs", "abc"], {}, "invalid int value: 'abc'"),
    "negative epochs": (TRAIN + ["--epochs", "-1"], {}, "epochs must be a whole number from 1"),
    "zero epochs": (TRAIN + ["--epochs", "0"], {}, "epochs must be a whole number from 1"),
    "nan learning rate": (TRAIN + ["--lr", "nan"], {}, "lr must be a number above 0"),
    "infinite learning rate": (TRAIN + ["--lr", "inf"], {}, "lr must be a number above 0"),
    "negative learning rate": (TRAIN + ["--lr", "-0.1"], {}, "lr must be a number above 0"),
    "batch of zero": (TRAIN + ["--batch-size", "0"], {}, "batch_size must be a whole number from 1"),
    "huge batch": (TRAIN + ["--batch-size", "1000000"], {}, "batch_size must be a whole number from 1"),
    "zero seeds": (TRAIN + ["--seeds", "0"], {}, "--seeds must be a whole number from 1"),
    "a million seeds": (TRAIN + ["--seeds", "1000000"], {}, "--seeds must be a whole number from 1"),
    "negative seed": (TRAIN + ["--seed", "-1"], {}, "seed must be a whole number from 0"),
    "negative max batches": (TRAIN + ["--max-batches", "-1"], {}, "max_batches must be a whole number"),
    "negative train limit": (TRAIN + ["--train-limit", "-5"], {}, "train_limit must be a whole number"),
    "validation split larger than the data": (TRAIN + ["--val-split", "100000"], {}, "validation split"),
    "zero alpha multiplier": (
        ["train", "--model", "cross_stitch", *QUICK, "--alpha-lr-mult", "0"], {}, "alpha_lr_mult must be"),
    "compare with zero epochs": (["compare", "--data", "synthetic", "--epochs", "0"], {}, "epochs must be"),
    # names
    "unknown model": (["train", "--model", "resnet", *QUICK], {}, "invalid choice: 'resnet'"),
    "unknown task": (TRAIN + ["--tasks", "even", "prime"], {}, "unknown task(s) 'prime'"),
    "unknown weighting": (TRAIN + ["--weighting", "magic"], {}, "invalid choice: 'magic'"),
    "unknown data": (["train", "--model", "hard", "--data", "imagenet"], {}, "invalid choice: 'imagenet'"),
    "a weighting STL cannot use": (
        ["train", "--model", "stl", *QUICK, "--weighting", "gradnorm"], {}, "stl shares none"),
    "no model": (["train", *QUICK], {}, "required: --model"),
    "no command": ([], {}, "required: command"),
    "unknown command": (["fly"], {}, "invalid choice: 'fly'"),
    # environment settings: checked before anything trains or is queued
    "MTL_MAX_PER_OWNER not a number": (SUBMIT, {"MTL_MAX_PER_OWNER": "abc"}, "MTL_MAX_PER_OWNER='abc' is not usable"),
    "MTL_MAX_PER_CLIENT of zero": (TRAIN, {"MTL_MAX_PER_CLIENT": "0"}, "MTL_MAX_PER_CLIENT='0' is not usable"),
    "MTL_MAX_JOBS negative": (COMPARE, {"MTL_MAX_JOBS": "-1"}, "MTL_MAX_JOBS='-1' is not usable"),
    "MTL_WORKERS not a number": (TRAIN, {"MTL_WORKERS": "many"}, "MTL_WORKERS='many' is not usable"),
    "MTL_THREADS of zero": (SUBMIT, {"MTL_THREADS": "0"}, "MTL_THREADS='0' is not usable"),
    "MTL_MAX_THREADS not a number": (SUBMIT, {"MTL_MAX_THREADS": "all"}, "MTL_MAX_THREADS='all' is not usable"),
    "MTL_MAX_JOB_MINUTES nan": (SUBMIT, {"MTL_MAX_JOB_MINUTES": "nan"}, "MTL_MAX_JOB_MINUTES='nan' is not usable"),
    "MTL_ABANDON_MINUTES negative": (SUBMIT, {"MTL_ABANDON_MINUTES": "-5"}, "MTL_ABANDON_MINUTES='-5' is not usable"),
    "MTL_WORKER_NICE negative": (SUBMIT, {"MTL_WORKER_NICE": "-10"}, "MTL_WORKER_NICE='-10' is not usable"),
    "MTL_EXECUTOR unknown": (SUBMIT, {"MTL_EXECUTOR": "kubernetes"}, "MTL_EXECUTOR='kubernetes' is not usable"),
}  # fmt: skip


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    (tmp_path / "a-file").write_text("not a model")
    config = TrainConfig.preset("hard")
    model_file = save_model(tmp_path / "good.safetensors", build_model("hard", config.tasks), config)
    return {"tmp": str(tmp_path), "model": str(model_file)}


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's refusals
        return exc.code


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 27


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_command_line_gets_one_sentence_and_a_non_zero_exit(case, places, monkeypatch, capsys):
    argv, env, words = CASES[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = set(Path(places["tmp"]).rglob("*"))
    code = run_main([a.format(**places) for a in argv])
    out, err = capsys.readouterr()
    assert code not in (0, None), out
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0]
    assert "epoch" not in out  # refused before anything trained
    assert set(Path(places["tmp"]).rglob("*")) == before  # and nothing was written


def test_an_output_folder_without_write_permission_is_refused_before_training(places, monkeypatch, capsys):
    import mtl_core.cli

    locked = Path(places["tmp"]) / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(mtl_core.cli.os, "access", lambda p, mode: real(p, mode) and Path(p) != locked)
    assert run_main(TRAIN + ["--json", str(locked / "new" / "out.json")]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == f"error: cannot write {locked / 'new' / 'out.json'}: no permission to write in {locked}"
    assert "epoch" not in out


def test_outputs_into_new_folders_are_written(places, capsys):
    js, model = Path(places["tmp"]) / "new" / "out.json", Path(places["tmp"]) / "models" / "m.safetensors"
    assert run_main(TRAIN + ["--json", str(js), "--save", str(model)]) == 0
    assert js.is_file() and model.is_file()


def test_a_bad_setting_stops_the_command_line_process_with_one_line(tmp_path):
    env = dict(os.environ, MTL_HOME=str(tmp_path), MTL_MAX_PER_OWNER="lots")
    out = subprocess.run(
        [sys.executable, "-m", "mtl_core", "submit", "--model", "hard", *QUICK],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: MTL_MAX_PER_OWNER='lots' is not usable: it must be a whole number from 1 to 100,000"
    )
    assert not (tmp_path / "runs.sqlite").exists()  # nothing queued


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("MTL_MAX_PER_OWNER", "abc", "a whole number from 1 to 100,000"),
        ("MTL_NEW_IDS_WINDOW_S", "-5", "a number from 1 to 86400"),
    ],
)
def test_a_bad_setting_stops_the_server_at_its_start_with_one_sentence(tmp_path, name, value, rule):
    env = dict(os.environ, MTL_HOME=str(tmp_path), **{name: value})
    out = subprocess.run(
        [sys.executable, "-m", "dashboard.serve", "--server.port", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line == f"mtl-playground: cannot start: {name}={value!r} is not usable: it must be {rule}"
