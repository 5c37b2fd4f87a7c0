"""The bad-input corpus: configurations, pictures, model files, hostile names and downloads. Every case
gets a specific message within bounded time and memory; nothing is lost and nothing is executed."""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save as st_save

from mtl_core import cli
from mtl_core.analysis import compare_rows, comparison_json
from mtl_core.checkpoint import ModelFileError, load_model_bytes, model_bytes
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.models import build_model
from mtl_core.predict import ImageInputError, prepare_drawing, read_image_bytes

TIME_LIMIT_S = 5.0
MEMORY_LIMIT_MB = 100


def bounded(fn):
    """Run `fn()`; it must finish in TIME_LIMIT_S and allocate under MEMORY_LIMIT_MB at its peak."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert elapsed < TIME_LIMIT_S, f"took {elapsed:.1f} s"
        assert peak < MEMORY_LIMIT_MB, f"allocated {peak:.0f} MB"


# ----------------------------------------------------------------------------- configurations

CONFIGS = {
    "zero epochs": (dict(epochs=0), "epochs must be a whole number from 1 to 500"),
    "a billion epochs": (dict(epochs=10**9), "epochs must be a whole number from 1 to 500"),
    "epochs as a bool": (dict(epochs=True), "epochs must be a whole number"),
    "NaN learning rate": (dict(lr=math.nan), "lr must be a number above 0"),
    "infinite learning rate": (dict(lr=math.inf), "lr must be a number above 0"),
    "negative learning rate": (dict(lr=-1.0), "lr must be a number above 0"),
    "batch of zero": (dict(batch_size=0), "batch_size must be a whole number from 1"),
    "batch as text": (dict(batch_size="128"), "batch_size must be a whole number"),
    "unknown task": (dict(tasks=("even", "prime")), "unknown task(s) 'prime'"),
    "no tasks": (dict(tasks=()), "choose at least one task"),
    "negative loss weight": (dict(loss_weights={"even": -1.0}), "loss weight of 'even' must be from 0 to 1000"),
    "negative seed": (dict(seed=-1), "seed must be a whole number from 0"),
    "unknown model": (dict(model="resnet"), "unknown model 'resnet'"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_configs_are_refused_with_the_reason(case):
    fields, message = CONFIGS[case]
    with pytest.raises(ConfigError) as err:
        bounded(lambda: TrainConfig(**{"model": "hard", **fields}))
    assert message in str(err.value)


CLI_CASES = {
    "negative epochs": (["--epochs", "-5"], "epochs must be a whole number from 1 to 500"),
    "NaN learning rate": (["--lr", "nan"], "lr must be a number above 0"),
    "batch larger than the data": (["--batch-size", "100000", "--data", "synthetic"], "batch_size must be"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_cli_options_exit_2_with_the_reason(case, capsys):
    args, message = CLI_CASES[case]
    assert cli.main(["train", "--model", "hard", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_an_unknown_cli_model_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", "resnet"])
    assert exit_.value.code == 2 and "invalid choice: 'resnet'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- canvases and pictures


def canvas(draw=None, size=280, background=(0, 0, 0, 255)) -> np.ndarray:
    img = Image.new("RGBA", (size, size), background)
    if draw:
        draw(ImageDraw.Draw(img))
    return np.asarray(img)


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def stroke(d, fill=(255, 255, 255, 255), box=(130, 60, 150, 220)):
    d.rectangle(box, fill=fill)


def sixteen_bit_digit() -> bytes:
    a = np.full((64, 64), 60000, dtype=np.uint16)
    a[10:54, 28:36] = 500  # dark stroke on light 16-bit paper
    return encoded(Image.fromarray(a))  # uint16 -> mode I;16


def cmyk_digit() -> bytes:
    img = Image.new("CMYK", (64, 64), (0, 0, 0, 0))  # white paper
    ImageDraw.Draw(img).rectangle((28, 10, 36, 54), fill=(0, 0, 0, 255))  # black ink
    return encoded(img, "JPEG")


def bomb() -> bytes:
    """A 20,000 x 20,000 one-bit PNG: under 100 kB on disk, 400 million pixels decoded."""
    return encoded(Image.new("1", (20_000, 20_000)))


# (input maker, expected: "ok" for a usable digit, else a fragment of the message)
DRAWINGS = {
    "blank canvas": (lambda: canvas(), "Draw a digit (the picture is one flat colour)."),
    "full ink": (lambda: canvas(background=(255, 255, 255, 255)), "Draw a digit (the picture is one flat colour)."),
    "one dot": (lambda: canvas(lambda d: d.point((140, 140), fill=(255,) * 4)), "that is a dot"),
    "off-centre digit": (lambda: canvas(lambda d: stroke(d, box=(5, 5, 25, 120))), "off to one side"),
    "black ink on transparent": (
        lambda: canvas(lambda d: stroke(d, fill=(0, 0, 0, 255)), background=(0, 0, 0, 0)),
        "ok",
    ),
    "plain white stroke on black": (lambda: canvas(stroke), "ok"),
}


@pytest.mark.parametrize("case", list(DRAWINGS))
def test_drawings_give_a_digit_or_say_why_not(case):
    make, expected = DRAWINGS[case]
    image, message = bounded(lambda: prepare_drawing(make()))
    if expected == "ok":
        assert image is not None and image.shape == (28, 28) and message == ""
    elif image is not None:  # usable, with a hint
        assert expected in message
    else:
        assert expected in message


UPLOADS = {
    "empty file": (lambda: b"", "the file is empty"),
    "over 2 MB": (lambda: b"\x89PNG" + b"0" * (2 * 1024 * 1024), "the limit is 2 MB"),
    "text renamed .png": (lambda: b"#!/bin/sh\necho not an image\n", "not a picture"),
    "truncated PNG": (lambda: encoded(Image.new("RGB", (64, 64), "white"))[:60], "damaged or cut short"),
    "decompression bomb": (bomb, "pixels in all"),
    "1x1 picture": (lambda: encoded(Image.new("L", (1, 1))), "only 1x1 pixels"),
    "16-bit greyscale": (sixteen_bit_digit, "ok"),
    "CMYK JPEG": (cmyk_digit, "ok"),
    "RGBA with transparency": (
        lambda: encoded(Image.fromarray(canvas(lambda d: stroke(d, fill=(0, 0, 0, 255)), background=(0, 0, 0, 0)))),
        "ok",
    ),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_uploaded_pictures_are_read_or_refused_with_the_reason(case):
    make, expected = UPLOADS[case]
    data = make()
    if expected != "ok":
        with pytest.raises(ImageInputError) as err:
            bounded(lambda: read_image_bytes(data))
        assert expected in str(err.value)
        return
    image, message = bounded(lambda: prepare_drawing(read_image_bytes(data)))
    assert image is not None, message
    # The stroke is the brightest part of the model input, wherever the ink colour came from.
    assert image[:, 12:16].mean() > image[:, :6].mean()


# ----------------------------------------------------------------------------- model files


class _Payload:
    """Unpickling this would create a file: the proof that a loader ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _good_file(model="hard") -> bytes:
    config = TrainConfig.preset(model, data="synthetic")
    return model_bytes(build_model(config.model, config.tasks), config)


def _with_tensors(change, model="hard") -> bytes:
    """A valid file of `model` with its tensors changed by `change(dict)`, the metadata kept."""
    from safetensors.torch import load

    good = _good_file(model)
    n = struct.unpack("<Q", good[:8])[0]
    meta = json.loads(good[8 : 8 + n])["__metadata__"]
    tensors = load(good)
    change(tensors)
    return st_save(tensors, metadata=meta)


def _nested_metadata() -> bytes:
    deep = "[" * 100_000 + "]" * 100_000
    return st_save({"w": torch.zeros(1)}, metadata={"format": "mtl-playground/1", "config": deep})


def _oversized_header() -> bytes:
    return struct.pack("<Q", 50_000_000) + b"{" + b" " * 1000


def _wrong_architecture() -> bytes:
    stl = build_model("stl", TrainConfig.preset("stl").tasks)
    meta = json.loads(_good_file()[8 : 8 + struct.unpack("<Q", _good_file()[:8])[0]])["__metadata__"]
    return st_save({k: v.contiguous() for k, v in stl.state_dict().items()}, metadata=meta)


def _set_first(value_fn):
    def change(tensors):
        key = sorted(tensors)[0]
        tensors[key] = value_fn(tensors[key])

    return change


MODEL_FILES = {
    "zero bytes": (lambda tmp: b"", "the file is empty"),
    "torch.save with a code payload": (
        lambda tmp: _torch_save(_Payload(tmp / "sentinel")),
        "pickle or torch.save file",
    ),
    "raw pickle with a code payload": (
        lambda tmp: pickle.dumps(_Payload(tmp / "sentinel"), protocol=4),
        "pickle or torch.save file",
    ),
    "deeply nested JSON metadata": (lambda tmp: _nested_metadata(), "nested too deeply"),
    "oversized header": (lambda tmp: _oversized_header(), "header claims 50,000,000 bytes"),
    "not this playground's file": (lambda tmp: st_save({"w": torch.zeros(2)}), "not a model saved by this playground"),
    "wrong architecture": (lambda tmp: _wrong_architecture(), "do not match a hard model"),
    "wrong shape": (lambda tmp: _with_tensors(_set_first(lambda t: torch.zeros(3, 3))), "expected"),
    "wrong dtype": (lambda tmp: _with_tensors(_set_first(lambda t: t.double())), "float64"),
    "NaN weights": (lambda tmp: _with_tensors(_set_first(lambda t: torch.full_like(t, math.nan))), "NaN"),
}


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(MODEL_FILES))
def test_model_files_are_refused_with_the_reason_and_run_no_code(case, tmp_path):
    make, message = MODEL_FILES[case]
    payload = make(tmp_path)
    with pytest.raises(ModelFileError) as err:
        bounded(lambda: load_model_bytes(payload))
    assert message in str(err.value)
    assert not (tmp_path / "sentinel").exists()  # nothing was unpickled


def test_a_good_model_file_still_loads():
    model, config, _ = load_model_bytes(_good_file("cross_stitch"))
    assert config.model == "cross_stitch" and not model.training


# ----------------------------------------------------------------------------- names and downloads

HOSTILE = "**bold** [click](javascript:alert(1)) <img src=x onerror=alert(1)> # heading `code`"


def test_hostile_names_are_shown_as_plain_text_in_markdown_and_charts():
    from dashboard.text import chart_text, md_escape

    escaped = md_escape(HOSTILE)
    # Every Markdown or HTML character is preceded by a backslash, so none of them acts.
    unescaped = __import__("re").sub(r"\\.", "", escaped)
    assert not set(unescaped) & set("\\`*_{}[]()#+-.!|<>~$:=^"), unescaped
    assert __import__("re").sub(r"\\(.)", r"\1", escaped) == HOSTILE
    assert chart_text("<b onmouseover=x>a</b>") == "&lt;b onmouseover=x&gt;a&lt;/b&gt;"


def test_a_hostile_run_name_is_plain_text_on_the_page(synthetic):
    from test_pages import assert_ok, open_page, stored_run

    from mtl_core.jobs.runner import shutdown_server_runners

    shutdown_server_runners()
    try:
        stored_run("hard", synthetic, label=HOSTILE[:40])
        at = open_page("pages/train.py")
        assert_ok(at)
        heading = [m.value for m in at.markdown if "even" in m.value and "bold" in m.value][0]
        assert "\\*\\*bold\\*\\*" in heading and "\\[click\\]" in heading
    finally:
        shutdown_server_runners()


def _run(best_avg, acc, seconds):
    return {
        "id": "20260101-000000-abcdef",
        "label": "r",
        "model": "hard",
        "status": "finished",
        "created": 0.0,
        "config": {"tasks": ["even", "mult3"], "epochs": 2, "data": "synthetic"},
        "data_source": "synthetic",
        "best_avg": best_avg,
        "best": {"even": {"acc": acc}, "mult3": {"acc": math.nan}},
        "params": 52386,
        "train_seconds": seconds,
        "best_epoch": 2,
    }


def test_downloads_are_strict_json_and_keep_full_precision():
    import pandas as pd

    rows = compare_rows([_run(0.987654321, 0.9912345678, 12.3456789)], rounded=False)
    text = comparison_json(rows, [{"run": "r", "value": math.nan}, {"run": "r", "value": math.inf}])
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert parsed["curves"][0]["value"] is None and parsed["table"][0]["mult3 acc %"] is None
    csv = pd.DataFrame(rows).to_csv(index=False)
    assert "98.7654321" in csv and "12.3456789" in csv  # not rounded to 2 decimals
    shown = compare_rows([_run(0.987654321, 0.9912345678, 12.3456789)])
    assert shown[0]["best avg acc %"] == 98.77  # the table on screen is rounded
