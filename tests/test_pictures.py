"""explore.views.pictures: PNG bytes, crisp upscaling, one-line status messages."""

import io

import numpy as np
from PIL import Image

from explore.views.pictures import one_line, png_bytes


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_png_bytes_upscales_small_images_nearest():

    img = np.zeros((64, 64, 3), np.uint8)
    img[:32] = 255
    data = png_bytes(img, 192)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_size(data) == (192, 192)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        vals = set(np.asarray(im.convert("L")).ravel().tolist())
    assert vals == {0, 255}  # NEAREST: no blurred grey at the edge


def test_one_line():
    assert one_line(ValueError("first\nsecond")) == "first"
