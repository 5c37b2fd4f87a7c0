"""Prediction, array in and array out: canvas preprocessing and per-task probabilities."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtl_core.data import MEAN, STD
from mtl_core.metrics import probabilities
from mtl_core.models import MultiTaskModel

INK_THRESHOLD = 0.1  # fraction of full intensity below which a pixel counts as background
MAX_IMAGE_BYTES = 2 * 1024 * 1024  # .streamlit/config.toml caps uploads at the same 2 MB
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_CANVAS_SIDE = 2000  # the Draw page's canvas is 280x280 (more on a high-density screen, never this)
MIN_IMAGE_SIDE = 8
MIN_INK_SIDE = 4  # a drawing smaller than this in both directions is a dot, not a digit
DRAW_A_DIGIT = "Draw a digit"


class ImageInputError(ValueError):
    """A picture that cannot be used; the message says why, in a sentence."""


def _too_large(n_bytes: int) -> ImageInputError:
    return ImageInputError(f"the file is {n_bytes / 1e6:.1f} MB; the limit is {MAX_IMAGE_BYTES / 1e6:.0f} MB")


def read_image_bytes(data: bytes, max_side: int | None = None) -> np.ndarray:
    """Bytes of an uploaded picture -> an RGBA uint8 array; ImageInputError with the reason otherwise.

    The size (pixels in all, and with `max_side` the longer side) is checked from the header before
    any pixel is decoded, so a decompression bomb costs nothing; 16-bit greyscale is scaled to 8 bits
    rather than clipped to white."""
    if not data:
        raise ImageInputError("the file is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(len(data))
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageInputError(f"the picture is {w}x{h} pixels; at most {MAX_IMAGE_PIXELS:,} pixels in all")
            if max_side is not None and max(w, h) > max_side:
                raise ImageInputError(f"the picture is {w}x{h} pixels; at most {max_side}x{max_side} here")
            probe.verify()  # structure check without decoding everything
        img = Image.open(io.BytesIO(data))
        img.seek(0)  # first frame of a GIF or WebP animation
        img.load()
    except ImageInputError:
        raise  # a ValueError too: the sentence above, not "damaged"
    except Image.DecompressionBombError:
        raise ImageInputError(f"the picture is far larger than {MAX_IMAGE_PIXELS:,} pixels in all") from None
    except UnidentifiedImageError:
        raise ImageInputError("not a picture: PNG, JPEG, GIF, BMP or WebP are read") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageInputError("the picture is damaged or cut short") from None
    if min(img.size) < MIN_IMAGE_SIDE:
        raise ImageInputError(
            f"the picture is only {img.width}x{img.height} pixels; use one at least {MIN_IMAGE_SIDE} pixels across"
        )
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        span = a.max() - a.min()
        a = (a - a.min()) / span * 255 if span > 0 else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8))
    return np.asarray(img.convert("RGBA"))


_DATA_URL_CACHE: OrderedDict[bytes, np.ndarray | str] = OrderedDict()  # URL hash -> picture or refusal
_DATA_URL_CACHE_LIMITS = (256, 32 * 2**20)  # entries, bytes: a hundred canvas pictures, shared by every session
_data_url_lock = threading.Lock()


def read_data_url(url: object, max_side: int = MAX_CANVAS_SIDE) -> np.ndarray:
    """A picture sent as a `data:image/...;base64,...` URL (the Draw page's canvas) -> RGBA uint8 array;
    ImageInputError with the reason otherwise, the same sentences as an upload's.

    Nothing is decoded before it is checked: the base64 text's length before base64 is decoded, then
    (read_image_bytes) the bytes and the header's size before any pixel is. The outcome is remembered by
    the URL's hash, so a message sent again costs one hash; the arrays handed out are read-only."""
    if not isinstance(url, str):
        raise ImageInputError("the drawing did not arrive as a picture")
    head, comma, encoded = url.partition(",")
    if not comma or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ImageInputError("the drawing did not arrive as a picture")
    n_bytes = len(encoded) * 3 // 4  # what the base64 text decodes to, within two bytes
    if n_bytes > MAX_IMAGE_BYTES:
        raise _too_large(n_bytes)
    key = hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest() + max_side.to_bytes(4, "little")
    with _data_url_lock:
        known = _DATA_URL_CACHE.get(key)
        if known is not None:
            _DATA_URL_CACHE.move_to_end(key)
    if known is None:
        try:
            known = read_image_bytes(base64.b64decode(encoded, validate=True), max_side=max_side)
            known.setflags(write=False)
        except (binascii.Error, ValueError) as exc:  # ImageInputError is a ValueError too
            known = str(exc) if isinstance(exc, ImageInputError) else "the picture is damaged or cut short"
        _remember(key, known)
    if isinstance(known, str):
        raise ImageInputError(known)
    return known


def _remember(key: bytes, value: np.ndarray | str) -> None:
    def size(v: np.ndarray | str) -> int:
        return v.nbytes if isinstance(v, np.ndarray) else len(v)

    with _data_url_lock:
        _DATA_URL_CACHE[key] = value
        most, budget = _DATA_URL_CACHE_LIMITS
        total = sum(size(v) for v in _DATA_URL_CACHE.values())
        while len(_DATA_URL_CACHE) > 1 and (len(_DATA_URL_CACHE) > most or total > budget):
            total -= size(_DATA_URL_CACHE.popitem(last=False)[1])


def prepare_drawing(image: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(28x28 model input or None, a sentence for the user: why there is no input, or a hint)."""
    grey = to_grey(image)
    ink = grey > INK_THRESHOLD
    if not ink.any():
        flat = np.ptp(np.asarray(image, dtype=np.float32)[..., :3] if np.ndim(image) == 3 else image) == 0
        return None, DRAW_A_DIGIT + (" (the picture is one flat colour)." if flat else ".")
    rows, cols = np.nonzero(ink)
    if np.ptp(rows) + 1 < MIN_INK_SIDE and np.ptp(cols) + 1 < MIN_INK_SIDE:
        return None, f"{DRAW_A_DIGIT}: that is a dot, too small to be read."
    x = preprocess_canvas(image)
    if x is None:
        return None, DRAW_A_DIGIT + "."
    h, w = grey.shape
    off_centre = abs((rows.mean() / h) - 0.5) > 0.3 or abs((cols.mean() / w) - 0.5) > 0.3
    return x, "Your digit was off to one side; it was centred, as MNIST digits are." if off_centre else ""


def to_grey(image: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx3 or HxWx4 uint8/float image -> float grey in [0, 1], ink bright on dark.

    Transparent pixels count as background. A mostly bright picture (dark ink on paper) is inverted."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    a = a.astype(np.float32)
    if a.max() > 1.0:
        a = a / 255.0
    if a.ndim == 3:
        rgb = a[..., :3] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if a.shape[2] == 4:
            alpha = a[..., 3]
            if alpha.min() < 1.0 and alpha.max() > 0:
                # Transparent background: the ink is what is opaque, whatever its colour, so lay the
                # picture on paper that contrasts with it (black ink on transparent is a digit too).
                ink_level = float(np.median(grey[alpha >= 0.5])) if (alpha >= 0.5).any() else 1.0
                paper = 1.0 if ink_level < 0.5 else 0.0
                grey = grey * alpha + paper * (1 - alpha)
        a = grey
    if np.median(a) > 0.5:
        a = 1.0 - a
    return np.clip(a, 0.0, 1.0)


def preprocess_canvas(rgba: np.ndarray) -> np.ndarray | None:
    """A drawing -> a normalised 28x28 float32 image the way MNIST was made, or None with no ink.

    MNIST digits were size-normalised to fit a 20x20 box (aspect kept) and centred by centre of mass
    in a 28x28 field; we do the same so a drawn digit looks like the training data."""
    grey = to_grey(rgba)
    ink = grey > INK_THRESHOLD
    if not ink.any():
        return None
    rows, cols = np.nonzero(ink)
    crop = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = (
        np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS), np.float32) / 255.0
    )
    small = np.clip(small, 0, 1)
    field = np.zeros((28, 28), np.float32)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    field[top : top + nh, left : left + nw] = small
    total = field.sum()
    if total <= 0:
        return None
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx = (yy * field).sum() / total, (xx * field).sum() / total
    dy, dx = int(round(13.5 - cy)), int(round(13.5 - cx))
    # Shift by whole pixels, clamped so no ink falls off the edge.
    rr, cc = np.nonzero(field > 0)
    dy = int(np.clip(dy, -rr.min(), 27 - rr.max()))
    dx = int(np.clip(dx, -cc.min(), 27 - cc.max()))
    field = np.roll(field, (dy, dx), axis=(0, 1))
    return ((field - MEAN) / STD).astype(np.float32)


def to_display(image: np.ndarray) -> np.ndarray:
    """A normalised 28x28 image back to uint8 for showing it."""
    return np.clip((np.asarray(image) * STD + MEAN) * 255, 0, 255).astype(np.uint8)


@torch.no_grad()
def predict(model: MultiTaskModel, images: np.ndarray | torch.Tensor, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Normalised images (N, 28, 28) or (N, 1, 28, 28) -> {task: probabilities (N, C) or values (N,)}."""
    x = torch.as_tensor(
        np.asarray(images, dtype=np.float32) if not isinstance(images, torch.Tensor) else images
    ).float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 28, 28), got {tuple(x.shape)}")
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {t: [] for t in model.tasks}
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size].to(device))
        for t in model.tasks:
            parts[t].append(probabilities(t, out[t]).cpu().numpy())
    return {t: np.concatenate(v) if v else np.zeros((0,)) for t, v in parts.items()}


SALIENCY_METHODS = {
    "smoothgrad": "SmoothGrad",  # Smilkov et al. 2017: the gradient averaged over noisy copies of the input
    "gradient": "plain gradient",  # Simonyan et al. 2014: one gradient, speckled
}
SMOOTHGRAD_SAMPLES = 25
SMOOTHGRAD_NOISE = 0.15  # the noise's standard deviation, as a share of the input's range (the paper's 10-20 %)


def saliency(model: MultiTaskModel, image: np.ndarray, method: str = "smoothgrad") -> dict[str, np.ndarray]:
    """Which pixels drove each task's answer for one normalised 28x28 image, scaled to [0, 1] per task:
    the size of the gradient of the answer's score with respect to each input pixel, either once
    ("gradient") or averaged over SMOOTHGRAD_SAMPLES copies of the image with Gaussian noise added
    ("smoothgrad"), which keeps the strokes and drops the speckle. Both through captum, the field's
    library. The score is the logit of the class given as the answer, or the value for the regression
    task; a map of zeros means no pixel moved it. The noise is seeded, so one drawing gives one map."""
    from captum.attr import NoiseTunnel, Saliency  # imported here: it loads matplotlib, which only this needs

    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; valid: {', '.join(SALIENCY_METHODS)}")
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image, dtype=np.float32)).reshape(1, 1, 28, 28).to(device)
    with torch.no_grad():
        answers = {t: o.float().reshape(1, -1) for t, o in model(x).items()}
    span = float(x.max() - x.min()) or 1.0
    x.requires_grad_(True)  # captum would set it too, with a warning each time
    maps = {}
    for t in model.tasks:
        # One logit (a binary task: its sign is the answer) or the value: that output; else the class answered.
        target = int(answers[t].argmax()) if answers[t].shape[1] > 1 else 0
        explain = Saliency(lambda inp, t=t: model(inp)[t].float().reshape(len(inp), -1))
        with torch.random.fork_rng(devices=[]):  # the noise is seeded without touching the server's RNG
            torch.manual_seed(0)
            if method == "smoothgrad":
                attr = NoiseTunnel(explain).attribute(
                    x,
                    nt_type="smoothgrad",
                    nt_samples=SMOOTHGRAD_SAMPLES,
                    nt_samples_batch_size=SMOOTHGRAD_SAMPLES,
                    stdevs=SMOOTHGRAD_NOISE * span,
                    target=target,
                    abs=True,
                )
            else:
                attr = explain.attribute(x, target=target, abs=True)
        g = attr.reshape(28, 28).detach().float().cpu().numpy()
        top = float(g.max())
        maps[t] = (g / top if top > 0 else g).astype(np.float32)
    return maps


SALIENCY_SCALE = 8  # 28 x 8 = 224 px: each input pixel a visible square, large enough to read in class


def saliency_overlay(image: np.ndarray, heat: np.ndarray, scale: int = SALIENCY_SCALE) -> np.ndarray:
    """The model's input in grey with the saliency in red on top, as a (28*scale)x(28*scale)x3 uint8 image
    (each pixel a square: nearest-neighbour, so the picture shows exactly the 28x28 grid the model reads)."""
    grey = to_display(image).astype(np.float32) / 255.0
    rgb = np.stack([grey * 0.45 + heat * 0.55, grey * 0.45, grey * 0.45], axis=-1)
    rgb = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)
