"""Pictures for notebooks and panels: PNG bytes, crisp upscaling of small images, strips, status lines.

Nothing here computes anything about a model: images come in by the package's rules
(`explore.images`) and leave as PIL images, PNG bytes or ``IPython.display.Image`` objects.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ..images import image_row, to_pil
from ..interp.attention import renormalize, upsample
from ..pipeline.latent import info

DISPLAY_SIZE = 256  # pixels: 64-px ShapesWorld images are shown 4x (strips 2x), NEAREST: crisp, big enough for a class
MAX_DISPLAY = 512  # larger images (real models) are shrunk to this for display


def as_pil(image):
    """One PIL RGB image by the package's image rules (`explore.images.to_pil`)."""
    return to_pil(image)


def display_image(image, size: int = DISPLAY_SIZE):
    """Upscale small images by an integer factor with NEAREST (crisp pixels); shrink large ones."""
    im = as_pil(image)
    side = max(im.size)
    if side < size:
        k = max(1, size // side)
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    elif side > MAX_DISPLAY:
        im = im.copy()
        im.thumbnail((MAX_DISPLAY, MAX_DISPLAY), Image.LANCZOS)
    return im


def png_bytes(image, size: int = DISPLAY_SIZE) -> bytes:
    """PNG bytes of an image for an ``ipywidgets.Image`` (see `display_image`)."""
    buf = io.BytesIO()
    display_image(image, size).save(buf, format="PNG")
    return buf.getvalue()


def raw_png(image) -> bytes:
    """PNG bytes of an image as it is (no resizing)."""
    buf = io.BytesIO()
    as_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig, dpi: int = 72) -> bytes:
    """PNG bytes of a matplotlib ``Figure`` (made without pyplot, so nothing is shown twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image_strip(images: Sequence, size: int = DISPLAY_SIZE // 2, pad: int = 3):
    """Images side by side, small ones upscaled NEAREST by the integer factor that reaches ``size`` (PIL)."""
    out = []
    for im in images:
        im = as_pil(im)
        k = max(1, -(-size // max(im.size)))
        out.append(im.resize((im.width * k, im.height * k), Image.NEAREST) if k > 1 else im)
    return image_row(out, pad=pad)


def show(obj, size: int = DISPLAY_SIZE, dpi: int = 80):
    """An ``IPython.display.Image`` of a matplotlib ``Figure`` or an image (small images upscaled NEAREST).

    Notebooks display figures with it, so they render whatever the matplotlib backend is (CI runs Agg).
    """
    from IPython.display import Image as IPImage  # IPython is there in notebooks; plain Python never imports it
    if hasattr(obj, "savefig"):
        return IPImage(data=figure_png(obj, dpi=dpi))
    im = as_pil(obj)
    k = max(1, min(size // im.height, 1600 // im.width))  # strips too: scale by height, at most 1600 px wide
    if k > 1:
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    return IPImage(data=raw_png(im))


def one_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error message, cut to ``limit`` characters (for status labels)."""
    text = str(error).strip().splitlines()
    msg = text[0] if text else type(error).__name__
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def latent_table(latent) -> str:
    """An HTML table of `explore.pipeline.latent.info` (shapes and norms of z, c, p)."""
    d = info(latent)
    rows = "".join(
        f"<tr><td><b>{k}</b></td><td>{tuple(d[k])}</td><td>{d['|' + k + '|']:.2f}</td></tr>" for k in ("z", "c", "p")
    )
    return ("<table style='font-size:90%'><tr><th>part</th><th>shape</th><th>norm</th></tr>"
            f"{rows}</table>")


def attention_overlay(image, amap, size: int = DISPLAY_SIZE, alpha: float = 0.5, cmap: str = "jet"):
    """``image`` (upscaled NEAREST) with an attention map ``(h, w)`` blended over it (bilinear, min-max scaled)."""
    base = display_image(image, size)
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(0)
    m = upsample(renormalize(a), (base.height, base.width))
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    heat = colormaps[cmap](m)[..., :3] * 255.0
    out = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


MASK_COLOURS = np.array([[230, 75, 53], [77, 187, 213], [0, 160, 135], [243, 155, 127]], dtype=np.uint8)


def mask_picture(masks, shape) -> np.ndarray:
    """Objects' masks (a dict, in order) as one ``(H, W, 3)`` picture: each object in its own colour
    (`MASK_COLOURS`) on black; where masks overlap, the later one."""
    out = np.zeros((*shape, 3), dtype=np.uint8)
    for i, m in enumerate(masks.values()):
        out[np.asarray(m, dtype=bool)] = MASK_COLOURS[i % len(MASK_COLOURS)]
    return out
