"""Property-based tests of the validators at the public boundary: bad input is an InputError, never a crash."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from explore.cli_args import floats as _floats
from explore.cli_args import parse_edit as _parse_edit
from explore.editing.api import settings_for
from explore.editing.settings import check_strength as _check_strength
from explore.errors import InputError
from explore.images import fit_size as _fit_size
from explore.images import to_pil_list as _to_pil_list
from explore.pipeline.latent import check_prompts

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_strength_accepts_exactly_the_finite_numbers(x):
    if math.isfinite(x):
        assert _check_strength(x) == x
    else:
        with pytest.raises(InputError, match="finite"):
            _check_strength(x)


@FAST
@given(st.sampled_from([np.uint8, np.float32, np.float64, np.int32, np.bool_]),
       arrays(dtype=np.float32, shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5)),
              elements=st.floats(-2, 3, width=32) | st.just(np.nan)))
def test_image_arrays_become_rgb_or_raise_input_error(dtype, values):
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        values = np.nan_to_num(values)  # integer images cannot hold NaN
        arr = (values * 100).clip(0, None).astype(dtype) if dtype != np.bool_ else values > 0.5
    else:
        arr = values.astype(dtype)
    try:
        ims = _to_pil_list(arr)
    except InputError:
        return
    assert all(im.mode == "RGB" and im.size == (arr.shape[1], arr.shape[0]) for im in ims)


@FAST
@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from([None, "crop", "resize"]))
def test_size_policy_is_never_silent(h, w, policy):
    from PIL import Image

    im = Image.new("RGB", (w, h))
    if policy is None and (h % 8 or w % 8):
        with pytest.raises(InputError, match="multiples of 8"):
            _fit_size([im], 8, policy)
        return
    try:
        out = _fit_size([im], 8, policy)
    except InputError as e:
        assert "smaller than" in str(e)
        return
    assert out[0].size[0] % 8 == 0 and out[0].size[1] % 8 == 0


@FAST
@given(st.text(max_size=30))
def test_prompts_are_strings_with_content(text):
    if text.strip():
        assert check_prompts(text) == [text]
    else:
        with pytest.raises(InputError, match="empty"):
            check_prompts(text)


@FAST
@given(st.text(max_size=20))
def test_edit_spec_parses_or_explains(text):
    try:
        a, b = _parse_edit(text)
    except InputError as e:
        assert "red->blue" in str(e)
        return
    assert a and b


@FAST
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=5))
def test_float_lists_round_trip(vals):
    assert _floats(",".join(repr(float(v)) for v in vals), "--x") == [float(v) for v in vals]


@FAST
@given(lr=st.floats(allow_nan=True, allow_infinity=True), steps=st.integers(-3, 5),
       tmin=st.floats(-0.5, 1.5), tmax=st.floats(-0.5, 1.5))
def test_settings_validation(tiny_sd3, lr, steps, tmin, tmax):
    ok = math.isfinite(lr) and lr >= 0 and steps >= 0 and 0 <= tmin <= tmax <= 1
    if ok:
        s = settings_for(tiny_sd3, "hsds", lr=lr, steps=steps, t_range=(tmin, tmax))
        assert s["lr"] == lr and s["t_range"] == (tmin, tmax)
    else:
        with pytest.raises(InputError):
            settings_for(tiny_sd3, "hsds", lr=lr, steps=steps, t_range=(tmin, tmax))


def test_same_seed_same_edit_bitwise(tiny_sd3):
    from explore.editing.api import edit
    from explore.editing.directions import text_direction
    from explore.pipeline.latent import encode
    from explore.pipeline.sampling import generate

    img = generate(tiny_sd3, "a red circle", seed=1)[0]
    src = encode(tiny_sd3, img, "a red circle")
    d = text_direction(tiny_sd3, "red", "blue", templates=["a {} circle"])
    a = edit(tiny_sd3, src, d, 1.0, "dds", steps=3, seed=7)
    b = edit(tiny_sd3, src, d, 1.0, "dds", steps=3, seed=7)
    c = edit(tiny_sd3, src, d, 1.0, "dds", steps=3, seed=8)
    assert torch.equal(a.latent.z, b.latent.z) and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(a.latent.z, c.latent.z)
