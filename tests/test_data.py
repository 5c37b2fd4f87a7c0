"""Data sources: synthetic twin, embedded subset, full MNIST from a cache dir, and a failing download."""

import time

import pytest
import torch

from mtl_core import data as data_mod
from mtl_core.data import DataUnavailable, batch_indices, load_data, load_subset, make_synthetic
from mtl_core.tasks import PAIR_TASKS, TASKS, make_targets


def test_synthetic_has_mnist_shapes_and_is_seeded():
    a, b = make_synthetic(100, 50, seed=1), make_synthetic(100, 50, seed=1)
    assert a.train_x.shape == (100, 1, 28, 28) and a.test_x.shape == (50, 1, 28, 28)
    assert torch.equal(a.train_x, b.train_x) and a.source == "synthetic"


def test_embedded_subset_is_real_balanced_and_offline():
    d = load_subset()
    assert (d.n_train, d.n_test) == (4000, 1000)
    assert torch.bincount(d.test_y).tolist() == [100] * 10
    assert d.source == "mnist-subset"
    assert abs(d.train_x.mean().item()) < 0.2  # normalised like MNIST


def test_task_labels_follow_the_spec():
    d = torch.arange(10)
    t = make_targets(d, tuple(t for t in TASKS if t not in PAIR_TASKS))
    assert t["even"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert t["mult3"].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert t["gt4"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert t["value"][9].item() == pytest.approx(1.0) and t["digit"].tolist() == list(range(10))


def test_batches_cover_every_index_once_per_epoch():
    g = torch.Generator().manual_seed(0)
    batches = batch_indices(1000, 128, g)
    assert [len(b) for b in batches][-1] == 1000 - 7 * 128
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))


def test_full_mnist_from_cache_dir(mnist_dir):
    d = mnist_dir
    if d is None:
        pytest.skip("no ../shared/data here (a user's clone); the subset tests cover real digits")
    data = load_data("mnist", data_dir=d, download=False)
    assert (data.n_train, data.n_test, data.source) == (60000, 10000, "mnist")
    assert torch.bincount(data.test_y).sum() == 10000


def test_failed_download_falls_back_quickly_with_one_line_reason(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    # The network is an edge we cannot reach on purpose: point torchvision at a closed local port.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(data_mod, "_download_failures", {})
    t0 = time.perf_counter()
    data = load_data("auto", data_dir=tmp_path / "empty")
    assert time.perf_counter() - t0 < 20
    assert data.source == "mnist-subset"
    assert "could not be downloaded" in data.note and "\n" not in data.note  # for everyone: a sentence
    assert "download" in data.detail and "\n" not in data.detail  # for the operator: the reason
    assert str(tmp_path) not in data.describe(detail=False) and str(tmp_path) not in data.note
    with pytest.raises(DataUnavailable, match="download"):
        load_data("mnist", data_dir=tmp_path / "empty")  # remembered: no second wait


def test_corrupt_cache_is_reported(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data_mod.MNIST_FILES:
        (raw / name).write_bytes(b"not really gzip")
    with pytest.raises(DataUnavailable, match="md5"):
        load_data("mnist", data_dir=tmp_path, download=False)


def test_unknown_source():
    with pytest.raises(ValueError, match="valid: auto, mnist, mnist-subset, synthetic"):
        load_data("cifar")
