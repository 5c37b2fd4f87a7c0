"""A trained model in the formats other tools read: safetensors (this project's own file), TorchScript
(loads with `torch.jit.load`, without this code) and ONNX (runs in onnxruntime and other runtimes).

The models return a dict {task: output}, which neither TorchScript tracing nor ONNX carries well, so
both exports trace a small wrapper that returns the outputs as a tuple in the order of `config.tasks`.
The ONNX graph names its input "image" (N, 1, 28, 28, normalised as mtl_core/data.py does) and each
output after its task. Both files say what they take and give (`input_spec`): ONNX in its metadata
("config", and "mean", "std", "input_shape", "tasks", "preprocessing", "outputs", "input" with all of
them as JSON), TorchScript in its extra files "config.json" and "input.json".
The outputs are what `forward` returns: logits for the classification tasks, the value in [0, 1] for
the regression one (mtl_core/models/__init__.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mtl_core.checkpoint import atomic_write_bytes, load_model, model_bytes
from mtl_core.config import TrainConfig
from mtl_core.data import MEAN, STD
from mtl_core.models import MODELS, MultiTaskModel, head_dim
from mtl_core.tasks import get_task

FORMATS = ("safetensors", "torchscript", "onnx")
SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 17  # every op these models use exists in 17; a lower opset runs on older runtimes too
TRACE_BATCH = 2  # not 1, so nothing in the trace can take the batch size for a constant one


def preprocessing_words() -> str:
    """How raw pixels become the input, in words a reader of the file can follow."""
    return f"pixels in 0–1 (white ink on black), then (x − {MEAN}) / {STD}"


def output_words(task: str, family: str) -> str:
    """What one output of the file means: logits, or the regression task's value."""
    t = get_task(task)
    if not t.is_classification:
        return "the value d/9 in [0, 1] (×9 for the digit)"
    if head_dim(task, family) == 1:
        return f"one logit per image, > 0 means {t.classes[1]}"
    classes = f"{t.classes[0]}–{t.classes[-1]}" if t.n_classes > 3 else ", ".join(t.classes)
    return f"{t.n_classes} logits per image ({classes})"


def input_spec(model: str, tasks: Sequence[str]) -> dict:
    """What an exported file takes and gives: the input's name, shape and type, the normalisation (the
    training data's, mtl_core/data.py), and the outputs in order. Written into every export, so the file
    alone says how to feed it."""
    family = MODELS[model].family
    return {
        "input_name": "image",
        "input_shape": ["batch", 1, 28, 28],
        "input_dtype": "float32",
        "pixel_range": [0.0, 1.0],
        "mean": MEAN,
        "std": STD,
        "preprocessing": preprocessing_words(),
        "tasks": list(tasks),
        "outputs": {t: output_words(t, family) for t in tasks},
    }


def spec_words(model: str, tasks: Sequence[str]) -> str:
    """`input_spec` in two sentences, for the download box."""
    spec = input_spec(model, tasks)
    shape = "×".join("N" if d == "batch" else str(d) for d in spec["input_shape"])
    outputs = "; ".join(f"{t}: {words}" for t, words in spec["outputs"].items())
    return f"Input: {shape} {spec['input_dtype']}, {spec['preprocessing']}. Outputs, in this order: {outputs}."


class _TupleOutputs(nn.Module):
    """The model with its outputs as a tuple in a fixed task order: what tracing and ONNX can carry."""

    def __init__(self, model: MultiTaskModel, tasks: tuple[str, ...]):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[t] for t in self.tasks)


@contextlib.contextmanager
def _quiet():
    """Silence warnings a user of the export can do nothing about. `finish_output` (mtl_core/models/base.py)
    branches on a head's width, a constant of the model, which the tracer cannot know; torch marks the
    tracer and the TorchScript-based ONNX exporter deprecated, yet they export these models with no extra
    package, and the tests compare every export's outputs with the model's, so a change there shows up in
    the tests instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        yield


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def export_bytes(model: MultiTaskModel, config: TrainConfig, fmt: str, extra: dict | None = None) -> bytes:
    """The model as a file in format `fmt` (one of FORMATS): evaluation mode, on the CPU, in fp32.

    Works on a copy, so the caller's model keeps its device, mode and memory format."""
    _check_format(fmt)
    tasks = tuple(config.tasks)
    if set(tasks) != set(model.tasks):
        raise ValueError(f"the config's tasks {list(tasks)} are not the model's {list(model.tasks)}")
    if fmt == "safetensors":
        return model_bytes(model, config, extra)
    # A CNN trained with channels_last keeps it in its weights; the exports get the plain layout.
    m = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    wrapper = _TupleOutputs(m, tasks).eval()
    example = torch.zeros(TRACE_BATCH, 1, 28, 28)
    config_json = json.dumps(config.to_dict())
    spec = input_spec(config.model, tasks)
    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, (example,))
            torch.jit.save(traced, buf, _extra_files={"config.json": config_json, "input.json": json.dumps(spec)})
            return buf.getvalue()
        torch.onnx.export(
            wrapper,
            (example,),
            buf,
            dynamo=False,  # the TorchScript-based exporter: the torch.export one would need onnxscript too
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=list(tasks),
            dynamic_axes={name: {0: "batch"} for name in ("image", *tasks)},
        )
    import onnx  # here, not at the top: the dashboard imports this module and rarely exports ONNX

    proto = onnx.load_from_string(buf.getvalue())
    # The file says what it is, as ours do, and how to feed it: each fact under its own key for a reader
    # that wants one, and all of them as JSON under "input".
    props = {"config": config_json, "input": json.dumps(spec)}
    props |= {k: json.dumps(spec[k]) for k in ("mean", "std", "input_shape", "tasks", "outputs")}
    props["preprocessing"] = spec["preprocessing"]
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


def export_file_bytes(model_path: str | Path, fmt: str) -> bytes:
    """A model file of this project in format `fmt`. An unreadable or foreign model file raises the
    checkpoint's ModelFileError with the reason."""
    _check_format(fmt)  # before reading the model: the cheaper mistake to report
    model, config, extra = load_model(model_path)
    return export_bytes(model, config, fmt, extra)


def export_file(model_path: str | Path, fmt: str, out_path: str | Path) -> Path:
    """`export_file_bytes` written to `out_path` atomically: a failed export leaves no half file."""
    out_path = Path(out_path)
    atomic_write_bytes(out_path, export_file_bytes(model_path, fmt))
    return out_path
