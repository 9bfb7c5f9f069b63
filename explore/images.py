"""Images in and out: the one set of rules for everything in `explore` that accepts an image.

Accepted, for one image:
  * a path (opened with PIL);
  * a PIL image of any mode: ``L``/``P``/``CMYK``/... are converted with ``convert("RGB")``,
    transparency (``RGBA``/``LA``/``P`` with alpha) is composited over white, 16-bit and float
    modes are scaled by their maximum;
  * a numpy array ``(H, W, 3)`` RGB, uint8 or float in [0, 1] (grey and alpha only through a PIL
    image of mode ``L`` or ``RGBA``: a 2-D array is more often a mask passed by mistake);
  * a torch tensor ``(3, H, W)`` float in [0, 1].
Batches: a list of the above, an ``(N, H, W, 3)`` array or an ``(N, 3, H, W)`` tensor.

Float inputs may overshoot [0, 1] by rounding (1e-3); more than that is an error, as are NaN/inf.
`to_pil_list` / `to_pil` give RGB PIL images; `to_arrays` / `to_array` give ``(H, W, 3)`` arrays
(uint8, or float64 in [0, 1] without a round trip through 8 bits when the input is float);
`fit_size` applies a model's size rule; `psnr` and `image_row` are the pixel helpers the rest of
the package shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError

_RANGE_TOL = 1e-3
RESIZE_POLICIES = (None, "crop", "resize")  # or an explicit (H, W)


def _check_float(arr, what: str) -> None:
    if not np.isfinite(arr).all():
        raise InputError(f"{what} has NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise InputError(f"{what} has values outside [0, 1] (min {lo:.4g}, max {hi:.4g}); pass pixels in [0, 1] "
                         "(for [-1, 1] data pass (x + 1) / 2; uint8 images are divided by 255 for you)")


def _from_pil(image: Image.Image) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise InputError("image has zero width or height")
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() if arr.max() > 0 else 1.0
        image = Image.fromarray((arr / hi * 255).round().astype(np.uint8))
    return image.convert("RGB")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(f"no image file at {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image file {path} is empty")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def _array(arr: np.ndarray, what: str = "image") -> np.ndarray:
    """One numpy image -> ``(H, W, 3)`` uint8, or float64 in [0, 1] if it was float."""
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"numpy images must be (H, W, 3) RGB, got shape {arr.shape} (for grey or RGBA pass a PIL "
                         "image of mode 'L' or 'RGBA')")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError("image has zero width or height")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        _check_float(arr, what)
        return np.clip(arr.astype(np.float64), 0.0, 1.0)
    if arr.dtype == bool:
        raise InputError("a boolean array is a mask, not an image")
    raise InputError(f"numpy images must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def _tensor(t: torch.Tensor) -> list[np.ndarray]:
    t = t.detach().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise InputError(f"image tensors must be (3, H, W) or (B, 3, H, W), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InputError(f"image tensors must be float in [0, 1], got dtype {t.dtype}")
    arr = t.double().permute(0, 2, 3, 1).numpy()
    _check_float(arr, "image tensor")
    return [np.clip(a, 0.0, 1.0) for a in arr]


def _items(image) -> list:
    """Split any accepted input into single images (PIL, (H, W, 3|) arrays)."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError("no images given (empty batch)")
        return [x for im in image for x in _items(im)]
    if isinstance(image, (str, Path)):
        return [_from_pil(_open(Path(image)))]
    if isinstance(image, Image.Image):
        return [_from_pil(image)]
    if isinstance(image, torch.Tensor):
        return _tensor(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 4:
            return [_array(a) for a in image]
        return [_array(image)]
    raise InputError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array, tensor or path")


def _labelled(fn, image):
    """Run ``fn`` on each single image of a batch; errors name the image's index in the batch."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError("no images given (empty batch)")
        out = []
        for i, im in enumerate(image):
            try:
                out += fn(im)
            except InputError as e:
                raise InputError(f"image {i}: {e}") from e
        return out
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return _labelled(fn, list(image))
    return fn(image)


def to_pil_list(image) -> list[Image.Image]:
    """Any accepted image or batch -> a list of RGB PIL images."""
    def one(im):
        out = []
        for x in _items(im):
            if isinstance(x, Image.Image):
                out.append(x)
            elif x.dtype == np.uint8:
                out.append(Image.fromarray(x))
            else:
                out.append(Image.fromarray((x * 255).round().astype(np.uint8)))
        return out

    return _labelled(one, image)


def to_pil(image) -> Image.Image:
    """Exactly one RGB PIL image (`InputError` for a batch of several)."""
    images = to_pil_list(image)
    if len(images) != 1:
        raise InputError(f"expected one image, got a batch of {len(images)}")
    return images[0]


def to_arrays(images, dtype: str = "uint8") -> list[np.ndarray]:
    """Any accepted image or batch -> a list of ``(H, W, 3)`` arrays.

    ``dtype``: ``"uint8"`` or ``"float"`` (float64 in [0, 1]; float inputs keep their precision).
    """
    if dtype not in ("uint8", "float"):
        raise InputError(f"dtype must be 'uint8' or 'float', got {dtype!r}")
    if images is None:
        raise InputError("no images given")

    def one(im):
        out = []
        for x in _items(im):
            a = np.asarray(x) if isinstance(x, Image.Image) else x
            if dtype == "uint8":
                out.append(a if a.dtype == np.uint8 else np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8))
            else:
                out.append(a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a)
        return out

    return _labelled(one, images)


def to_array(image, dtype: str = "uint8", name: str = "image") -> np.ndarray:
    """Exactly one image as an ``(H, W, 3)`` array (see `to_arrays`); errors start with ``name``."""
    try:
        arrays = to_arrays(image, dtype)
    except InputError as e:
        raise InputError(f"{name}: {e}") from e
    if len(arrays) != 1:
        raise InputError(f"{name} must be one image, got a batch of {len(arrays)}")
    return arrays[0]


def fit_size(images: Sequence[Image.Image], multiple: int, resize=None) -> list[Image.Image]:
    """Apply a size policy so both sides are multiples of ``multiple``.

    ``resize``: ``None`` (the sides must already fit), ``"crop"`` (centre crop), ``"resize"``
    (bicubic resample) or ``(H, W)`` (resample to that size). Every image of a batch must end up
    with the same size.
    """
    out = []
    for im in images:
        w, h = im.size
        if isinstance(resize, (tuple, list)):
            th, tw = int(resize[0]), int(resize[1])
            if th % multiple or tw % multiple or th <= 0 or tw <= 0:
                raise InputError(f"resize=({th}, {tw}) must be positive multiples of {multiple}")
            out.append(im.resize((tw, th), Image.Resampling.BICUBIC) if (w, h) != (tw, th) else im)
            continue
        if w % multiple == 0 and h % multiple == 0:
            out.append(im)
            continue
        tw, th = (w // multiple) * multiple, (h // multiple) * multiple
        if resize is None:
            raise InputError(
                f"image is {w}x{h} but this model needs sides that are multiples of {multiple}; pass "
                f"resize='crop' (centre-crop to {tw}x{th}), resize='resize' (resample to {tw}x{th}) or resize=(H, W)"
            )
        if tw == 0 or th == 0:
            raise InputError(f"image {w}x{h} is smaller than the model's minimum side of {multiple}")
        if resize == "crop":
            left, top = (w - tw) // 2, (h - th) // 2
            out.append(im.crop((left, top, left + tw, top + th)))
        elif resize == "resize":
            out.append(im.resize((tw, th), Image.Resampling.BICUBIC))
        else:
            raise InputError(f"resize must be None, 'crop', 'resize' or (H, W), got {resize!r}")
    sizes = {im.size for im in out}
    if len(sizes) > 1:
        raise InputError(f"images in one batch must share a size, got {sorted(sizes)}; pass resize=(H, W)")
    return out


def check_resize(resize) -> None:
    """Raise `InputError` for a ``resize`` value `fit_size` would not accept (checked before any work)."""
    if resize in RESIZE_POLICIES:
        return
    if isinstance(resize, (tuple, list)) and len(resize) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in resize):
        return
    raise InputError(f"resize must be None, 'crop', 'resize' or (H, W), got {resize!r}")


def psnr(a, b) -> float:
    """PSNR in dB of two images (or equal-shape batches) with pixels in [0, 1]; ``inf`` if identical.

    Arrays or tensors of the same shape; the mean squared error is taken over every element.
    """
    a = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    b = b.detach().cpu().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def image_row(images: Sequence, pad: int = 2, bg=(255, 255, 255)) -> Image.Image:
    """Images side by side (top-aligned, ``pad`` pixels apart) as one PIL image; None entries are skipped."""
    ims = [to_pil(im) for im in images if im is not None]
    if not ims:
        raise InputError("image_row needs at least one image")
    w = sum(im.width for im in ims) + pad * (len(ims) - 1)
    h = max(im.height for im in ims)
    out = Image.new("RGB", (w, h), bg)
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + pad
    return out


def image_grid(rows: Sequence[Image.Image], pad: int = 2, bg=(255, 255, 255)) -> Image.Image:
    """Rows (PIL images, e.g. from `image_row`) stacked top to bottom ``pad`` pixels apart."""
    if not rows:
        raise InputError("image_grid needs at least one row")
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + pad * (len(rows) - 1)), bg)
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + pad
    return out
