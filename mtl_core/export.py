"""A trained model in the formats other tools read: safetensors (this project's own file), TorchScript
(loads with `torch.jit.load`, without this code) and ONNX (runs in onnxruntime and other runtimes).

The models return a dict {task: output}, which neither TorchScript tracing nor ONNX carries well, so
both exports trace a small wrapper that returns the outputs as a tuple in the order of `config.tasks`.
The ONNX graph names its input "image" (N, 1, 28, 28, normalised as mtl_core/data.py does) and each
output after its task, with the config in its metadata ("config"); TorchScript keeps that order and
the config in its extra file "config.json".
The outputs are what `forward` returns: logits for the classification tasks, the value in [0, 1] for
the regression one (mtl_core/models.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_write_bytes, load_model, model_bytes
from .config import TrainConfig
from .models import MultiTaskModel

FORMATS = ("safetensors", "torchscript", "onnx")
SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 17  # every op these models use exists in 17; a lower opset runs on older runtimes too
TRACE_BATCH = 2  # not 1, so nothing in the trace can take the batch size for a constant one


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
    """Silence warnings a user of the export can do nothing about. `_finish` branches on a head's width,
    a constant of the model, which the tracer cannot know; torch marks the tracer and the TorchScript-based
    ONNX exporter deprecated, yet they export these models with no extra package, and the tests compare
    every export's outputs with the model's, so a change there shows up in the tests instead."""
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
    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, (example,))
            torch.jit.save(traced, buf, _extra_files={"config.json": config_json})
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
    onnx.helper.set_model_props(proto, {"config": config_json})  # the file says what it is, as ours do
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
