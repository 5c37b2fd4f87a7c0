"""Model export: every model in every format gives back the model's own outputs, task by task, at
batch sizes other than the traced one; the CLI writes the files; bad input gets a readable error."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mtl_core.checkpoint import load_model_bytes, save_model
from mtl_core.cli import main
from mtl_core.config import TrainConfig
from mtl_core.export import FORMATS, TRACE_BATCH, export_bytes, export_file
from mtl_core.models import MODELS, build_model

# Loading TorchScript is deprecated in torch too; it is how the file's users read it (see mtl_core/export.py).
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")

BATCHES = (5, 1)  # neither is the traced batch: the exports must keep the batch axis free
assert TRACE_BATCH not in BATCHES


def _made(name: str, **overrides):
    torch.manual_seed(0)
    config = TrainConfig.preset(name, **overrides)
    model = build_model(name, config.tasks, alpha_init=config.alpha_init).eval()
    return model, config


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))


def _run_export(payload: bytes, fmt: str, tasks: tuple[str, ...], x: torch.Tensor) -> dict[str, np.ndarray]:
    """Load an export the way its users would, run it on x, and name its outputs by task."""
    if fmt == "safetensors":
        model, config, _ = load_model_bytes(payload)
        assert config.tasks == tasks
        with torch.no_grad():
            return {t: v.numpy() for t, v in model(x).items()}
    if fmt == "torchscript":
        files = {"config.json": ""}
        loaded = torch.jit.load(io.BytesIO(payload), _extra_files=files)
        assert tuple(json.loads(files["config.json"])["tasks"]) == tasks
        with torch.no_grad():
            out = loaded(x)
        assert isinstance(out, tuple) and len(out) == len(tasks)
        return {t: v.numpy() for t, v in zip(tasks, out)}
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    names = [o.name for o in session.get_outputs()]
    assert names == list(tasks)
    meta = session.get_modelmeta().custom_metadata_map
    assert tuple(json.loads(meta["config"])["tasks"]) == tasks
    return dict(zip(names, session.run(None, {"image": x.numpy()})))


def _assert_same(got: dict[str, np.ndarray], model, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = {t: v.numpy() for t, v in model(x).items()}
    assert list(got) == list(want)
    for t in want:
        assert got[t].shape == want[t].shape, t
        np.testing.assert_allclose(got[t], want[t], rtol=1e-4, atol=1e-5, err_msg=t)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_exports_to_the_same_outputs(name, fmt):
    model, config = _made(name)
    payload = export_bytes(model, config, fmt)
    for n in BATCHES:
        x = _images(n)
        _assert_same(_run_export(payload, fmt, config.tasks, x), model, x)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_outputs_follow_the_configs_task_order(fmt):
    # Two tasks of one shape (B,): only the order tells them apart, and it is the config's.
    model, config = _made("hard", tasks=("mult3", "even"))
    x = _images(5)
    got = _run_export(export_bytes(model, config, fmt), fmt, ("mult3", "even"), x)
    _assert_same(got, model, x)


def test_export_leaves_the_callers_model_as_it_was():
    """A CNN trained with channels_last and still in training mode: exported as the plain eval model,
    and the caller's copy keeps its mode and layout (the ONNX exporter switches modes back and forth)."""
    model, config = _made("cnn")
    model = model.to(memory_format=torch.channels_last).train()
    payload = export_bytes(model, config, "onnx")
    assert model.training
    assert model.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = _images(5)
    got = _run_export(payload, "onnx", config.tasks, x)
    _assert_same(got, model.eval(), x)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_export_writes_a_file_that_runs(fmt, tmp_path, capsys):
    model, config = _made("hard")
    path = save_model(tmp_path / "m.safetensors", model, config, {"note": "hi"})
    out = tmp_path / "out" / f"m.{fmt}"
    assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    x = _images(5)
    _assert_same(_run_export(out.read_bytes(), fmt, config.tasks, x), model, x)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp file left behind
    if fmt == "safetensors":
        assert load_model_bytes(out.read_bytes())[2] == {"note": "hi"}


def test_unknown_format_is_refused_with_the_valid_ones(tmp_path, capsys):
    model, config = _made("hard")
    valid = "unknown export format 'tflite'; valid formats: safetensors, torchscript, onnx"
    with pytest.raises(ValueError, match=valid):
        export_bytes(model, config, "tflite")
    with pytest.raises(ValueError, match="valid formats"):
        export_file(tmp_path / "missing.safetensors", "tflite", tmp_path / "x")
    path = save_model(tmp_path / "m.safetensors", model, config)
    with pytest.raises(SystemExit) as exc:
        main(["export", str(path), "--format", "tflite", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a model at all, just some text", "not a model of this playground"),
        (b"", "the file is empty"),
        (None, "cannot read"),
    ],
    ids=["garbage", "empty", "missing"],
)
def test_bad_model_file_exits_2_with_the_reason(content, message, tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_unwritable_output_exits_2(tmp_path, capsys):
    model, config = _made("hard")
    path = save_model(tmp_path / "m.safetensors", model, config)
    (tmp_path / "file").write_text("a file, not a folder")
    assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "file" / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {tmp_path / 'file' / 'm.onnx'}")


def test_config_for_other_tasks_is_refused():
    model, _ = _made("hard")
    with pytest.raises(ValueError, match="not the model's"):
        export_bytes(model, TrainConfig.preset("hard", tasks=("even", "digit")), "onnx")


def test_the_dashboards_deferred_exports_run(tmp_path):
    """The dashboard's TorchScript and ONNX buttons hand Streamlit a callable that runs only on a click
    (never in the page tests); here it runs."""
    from dashboard.monitor import _exported

    model, config = _made("mmoe")
    path = save_model(tmp_path / "m.safetensors", model, config)
    x = _images(5)
    for fmt in ("torchscript", "onnx"):
        payload = _exported(str(path), path.stat().st_mtime, fmt)
        _assert_same(_run_export(payload, fmt, config.tasks, x), model, x)


# ----------------------------------------------------------------------------- the file says how to feed it


def _trained_on_real_digits():
    """The hard-sharing MLP after two epochs on the embedded 4,000 training digits (about a second)."""
    from mtl_core.data import load_subset
    from mtl_core.metrics import task_loss
    from mtl_core.tasks import make_targets

    data = load_subset()
    model, config = _made("hard")
    model.train()
    targets = make_targets(data.train_y, config.tasks)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(2):
        order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))
        for idx in order.split(64):
            out = model(data.train_x[idx])
            loss = sum(task_loss(t, out[t], targets[t][idx]) for t in config.tasks)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), config, data


def _accuracy(outputs: dict[str, np.ndarray], digits: torch.Tensor) -> dict[str, float]:
    """Accuracy per task of raw outputs: one logit (> 0 is the second class) or a logit per class."""
    from mtl_core.tasks import make_targets

    targets = make_targets(digits, list(outputs))
    out = {t: torch.as_tensor(v) for t, v in outputs.items()}
    return {
        t: float(((o > 0).long() if o.dim() == 1 else o.argmax(1)).eq(targets[t]).float().mean())
        for t, o in out.items()
    }


def test_raw_pixels_through_the_files_own_preprocessing_give_the_models_accuracy():
    from mtl_core.data import MEAN, STD
    from mtl_core.export import input_spec
    from mtl_core.predict import to_display

    model, config, data = _trained_on_real_digits()
    with torch.no_grad():
        want = _accuracy({t: v.numpy() for t, v in model(data.test_x).items()}, data.test_y)
    # What a user of the file has: 8-bit digits, as pixels in 0-1.
    pixels = (to_display(data.test_x.squeeze(1).numpy()) / 255.0).astype(np.float32)
    session = ort.InferenceSession(export_bytes(model, config, "onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    mean, std, shape = (json.loads(meta[k]) for k in ("mean", "std", "input_shape"))
    assert (mean, std) == (MEAN, STD) and shape == ["batch", 1, 28, 28]
    assert json.loads(meta["tasks"]) == list(config.tasks) == [o.name for o in session.get_outputs()]
    assert json.loads(meta["input"]) == input_spec(config.model, config.tasks)
    assert f"(x − {MEAN}) / {STD}" in meta["preprocessing"]

    def accuracy(x: np.ndarray) -> dict[str, float]:
        outputs = session.run(None, {"image": x.reshape(-1, *shape[1:]).astype(np.float32)})
        return _accuracy(dict(zip(json.loads(meta["tasks"]), outputs)), data.test_y)

    got = accuracy((pixels - mean) / std)
    assert got == pytest.approx(want, abs=0.005)  # 8-bit rounding moves an answer or two at most
    assert min(want.values()) > 0.85  # a model worth feeding right
    # Without the preprocessing the same file answers much worse: about twice the errors.
    raw = accuracy(pixels)
    for t in want:
        assert raw[t] < want[t] - 0.03, (t, raw[t], want[t])
    errors_raw, errors_got = (sum(1 - a for a in acc.values()) for acc in (raw, got))
    assert errors_raw > 1.5 * errors_got, (raw, got)
    # TorchScript carries the same facts.
    files = {"input.json": ""}
    torch.jit.load(io.BytesIO(export_bytes(model, config, "torchscript")), _extra_files=files)
    assert json.loads(files["input.json"]) == json.loads(meta["input"])


def test_the_download_box_words_use_the_projects_constants():
    from mtl_core.data import MEAN, STD
    from mtl_core.export import spec_words

    words = spec_words("hard", ("even", "digit", "value"))
    assert f"Input: N×1×28×28 float32, pixels in 0–1 (white ink on black), then (x − {MEAN}) / {STD}." in words
    assert "even: one logit per image, > 0 means even; digit: 10 logits per image (0–9); value:" in words
    assert "2 logits per image (odd, even)" in spec_words("cnn", ("even",))
