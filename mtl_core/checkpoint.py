"""Models on disk as safetensors, with the training config in the file's metadata.

`load_model(path)` rebuilds the model from the file alone and refuses anything that does not match
exactly. safetensors holds raw tensors and a JSON header, so loading an untrusted file runs no code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mtl_core.config import ConfigError, TrainConfig
from mtl_core.models import MultiTaskModel, build_model
from mtl_core.text import MESSAGE_MAX, plain_text, shown

FORMAT = "mtl-playground/1"
MAX_FILE_BYTES = 64 * 1024 * 1024  # the largest model here is under 2 MB


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message says what is wrong with it. The file is untrusted
    and the message may quote it, so it is plain text (mtl_core/text.py) of bounded length."""

    def __init__(self, message: str) -> None:
        super().__init__(plain_text(message, MESSAGE_MAX))


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temp file beside the target, fsync, rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_bytes(model: MultiTaskModel, config: TrainConfig, extra: dict | None = None) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(config.to_dict()), "extra": json.dumps(extra or {})}
    return st_save(tensors, metadata=meta)


def save_model(path: str | Path, model: MultiTaskModel, config: TrainConfig, extra: dict | None = None) -> Path:
    path = Path(path)
    atomic_write_bytes(path, model_bytes(model, config, extra))
    return path


MAX_HEADER_BYTES = 1_000_000  # a model's header here is a few kB


def _read_header(payload: bytes) -> dict:
    if not payload:
        raise ModelFileError("the file is empty")
    if len(payload) < 8:
        raise ModelFileError("file is too short to be a safetensors model")
    n = int.from_bytes(payload[:8], "little")
    fits = n <= min(MAX_HEADER_BYTES, len(payload) - 8) and payload[8:9] == b"{"
    if not fits and (
        payload[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or payload[:4] == b"PK\x03\x04"
    ):
        raise ModelFileError("this is a pickle or torch.save file, which can run code; only .safetensors is read")
    if n > MAX_HEADER_BYTES:
        raise ModelFileError(f"not a model of this playground (its header claims {n:,} bytes)")
    if n > len(payload) - 8:
        raise ModelFileError("not a safetensors file (bad header length)")
    try:
        header = json.loads(payload[8 : 8 + n])
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"not a safetensors file (header is not JSON: {type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ModelFileError("not a safetensors file (header is not a JSON object)")
    return header


def load_model_bytes(payload: bytes) -> tuple[MultiTaskModel, TrainConfig, dict]:
    """Rebuild a model from safetensors bytes; raises ModelFileError with the reason on any mismatch."""
    if len(payload) > MAX_FILE_BYTES:
        raise ModelFileError(f"file is {len(payload) / 1e6:.0f} MB; models here are under {MAX_FILE_BYTES // 2**20} MB")
    meta = _read_header(payload).get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"not a model saved by this playground (metadata format {shown(meta.get('format'))})")
    try:
        config = TrainConfig.from_dict(json.loads(meta["config"]))
        extra = json.loads(meta.get("extra", "{}"))
    except RecursionError:
        raise ModelFileError("the file's metadata is nested too deeply to be a training config") from None
    except (KeyError, ValueError, TypeError) as exc:
        reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        raise ModelFileError(f"the file's training config is invalid: {reason}") from None
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"corrupt safetensors data: {exc}") from None
    model = build_model(config.model, config.tasks, alpha_init=config.alpha_init)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"tensors do not match a {config.model} model: missing {missing[:5]}, "
            f"unexpected [{', '.join(map(shown, unexpected[:5]))}]"
        )
    for k, v in expected.items():
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype:
            raise ModelFileError(
                f"tensor {k!r} is {tuple(tensors[k].shape)} {tensors[k].dtype}, expected {tuple(v.shape)} {v.dtype}"
            )
        if v.is_floating_point() and not torch.isfinite(tensors[k]).all():
            raise ModelFileError(f"tensor {k!r} holds NaN or infinite values")
        if k.endswith("running_var") and (tensors[k] < 0).any():
            raise ModelFileError(f"tensor {k!r} holds negative variances")
    model.load_state_dict(tensors)
    model.eval()
    return model, config, extra


def load_model(path: str | Path) -> tuple[MultiTaskModel, TrainConfig, dict]:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"file is {size / 1e6:.0f} MB; models here are under {MAX_FILE_BYTES // 2**20} MB")
    return load_model_bytes(path.read_bytes())
