"""Models as safetensors: round trip from the file alone, and refusal of anything that does not match."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from mtl_core.checkpoint import ModelFileError, load_model, save_model
from mtl_core.config import TrainConfig
from mtl_core.models import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_rebuilds_the_same_function(name, tmp_path):
    torch.manual_seed(0)
    config = TrainConfig.preset(name, alpha_init="convex-0.9") if name == "cross_stitch" else TrainConfig.preset(name)
    model = build_model(name, config.tasks, alpha_init=config.alpha_init).eval()
    path = save_model(tmp_path / "m.safetensors", model, config, {"note": "hi"})
    loaded, cfg2, extra = load_model(path)
    assert cfg2 == config and extra == {"note": "hi"}
    x = torch.randn(4, 1, 28, 28)
    for t, y in model(x).items():
        assert torch.equal(loaded(x)[t], y)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def _saved(tmp_path, name="hard"):
    config = TrainConfig.preset(name)
    model = build_model(name)
    return save_model(tmp_path / "m.safetensors", model, config), model, config


def test_tampered_shapes_keys_and_metadata_are_rejected(tmp_path):
    path, model, config = _saved(tmp_path)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    meta = {"format": "mtl-playground/1", "config": json.dumps(config.to_dict()), "extra": "{}"}

    bad = dict(sd, **{"heads.even.weight": torch.zeros(2, 32)})
    save_file(bad, tmp_path / "shape.safetensors", metadata=meta)
    with pytest.raises(ModelFileError, match="heads.even.weight"):
        load_model(tmp_path / "shape.safetensors")

    save_file(dict(sd, extra=torch.zeros(1)), tmp_path / "keys.safetensors", metadata=meta)
    with pytest.raises(ModelFileError, match="unexpected"):
        load_model(tmp_path / "keys.safetensors")

    save_file(sd, tmp_path / "nometa.safetensors")
    with pytest.raises(ModelFileError, match="not a model saved by this playground"):
        load_model(tmp_path / "nometa.safetensors")

    cfg = dict(config.to_dict(), model="cnn")  # config says CNN, tensors are an MLP
    save_file(sd, tmp_path / "lie.safetensors", metadata=dict(meta, config=json.dumps(cfg)))
    with pytest.raises(ModelFileError, match="do not match a cnn model"):
        load_model(tmp_path / "lie.safetensors")

    cfg = dict(config.to_dict(), epochs=-1)
    save_file(sd, tmp_path / "cfg.safetensors", metadata=dict(meta, config=json.dumps(cfg)))
    with pytest.raises(ModelFileError, match="epochs"):
        load_model(tmp_path / "cfg.safetensors")

    nan = dict(sd, **{"heads.even.bias": torch.tensor([float("nan")])})
    save_file(nan, tmp_path / "nan.safetensors", metadata=meta)
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(tmp_path / "nan.safetensors")


def test_truncated_file_and_a_pickle_never_load(tmp_path):
    path, _, _ = _saved(tmp_path)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "cut.safetensors")

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "evil.safetensors")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "missing.safetensors")


def _with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize(
    "header",
    [b"[]", b'{"__metadata__": "x"}', b'{"__metadata__": []}', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"],
)
def test_crafted_headers_are_refused_with_a_reason(header):
    from mtl_core.checkpoint import load_model_bytes

    with pytest.raises(ModelFileError):
        load_model_bytes(_with_header(header))


def test_negative_batchnorm_variance_is_refused(tmp_path):
    config = TrainConfig.preset("cnn")
    model = build_model("cnn")
    with torch.no_grad():
        model.trunk[1].running_var[0] = -1.0
    save_model(tmp_path / "neg.safetensors", model, config)
    with pytest.raises(ModelFileError, match="negative variances"):
        load_model(tmp_path / "neg.safetensors")
