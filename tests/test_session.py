"""explore.views.session: the notebook session's caches and checks (no ipywidgets, no browser)."""

import numpy as np
import pytest

from explore.errors import InputError
from explore.views.session import EditSession, parse_pairs, strength_grid

GRID = (0.0, 1.0, 2.0)


def test_strength_grid():
    assert strength_grid(2.0, 0.25) == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    assert strength_grid(1.0, 0.5, start=-1.0) == (-1.0, -0.5, 0.0, 0.5, 1.0)
    with pytest.raises(InputError):
        strength_grid(2.0, 0.0)
    with pytest.raises(InputError):
        strength_grid(float("nan"), 0.5)


def test_parse_pairs():
    assert parse_pairs("red>blue, day -> night") == [("red", "blue"), ("day", "night")]
    with pytest.raises(InputError, match="word pair"):
        parse_pairs("red")


def test_session_caches_sources_sweeps_and_edits(tiny_session, count_calls):
    s = tiny_session
    src = s.source("red car", seed=0)
    assert s.source("red car", seed=0) is src  # cached encoding
    assert s.source("red car", seed=1) is not src
    key = s.plan(src, "color", "blue", "hsds", source_value="red")
    assert key.preserve == ("auto",) and dict(key.settings)["steps"] == 2  # no factor table: auto (issue 14)

    sw = s.sweep(key)
    assert sw.strengths == list(GRID)
    with count_calls(s.pipe) as calls:
        for strength in GRID:  # slider moves on the grid: lookups only
            fr = s.frame(key, strength)
            assert fr.cached and fr.origin == "sweep"
        assert s.sweep(key) is sw
    assert calls == []

    with count_calls(s.pipe) as calls:
        fresh = s.frame(key, 0.5)  # off the grid: the identified edit rendered at 0.5 (the default mode)
    assert not fresh.cached and fresh.origin == "render" and len(calls) > 0
    with count_calls(s.pipe) as calls:
        again = s.frame(key, 0.5)
    assert calls == [] and again.cached and again.image is fresh.image


def test_session_optimise_mode_runs_one_edit_per_new_strength(tiny_sd3, count_calls):
    s = EditSession(tiny_sd3, (0.0, 1.0, 2.0), {"steps": 2, "t_render": 0.1, "mode": "optimise"}, templates="prompt")
    src = s.source("red car", seed=0)
    key = s.plan(src, "color", "blue", "hsds", source_value="red")
    with count_calls(s.pipe) as calls:
        fresh = s.frame(key, 0.5)  # off the grid: one fresh edit
    assert not fresh.cached and fresh.origin == "edit" and len(calls) > 0
    with count_calls(s.pipe) as calls:
        again = s.frame(key, 0.5)
    assert calls == [] and again.cached and again.image is fresh.image


def test_session_rejects_unknown_settings(tiny_sd3):
    with pytest.raises(InputError, match="unknown edit setting"):
        EditSession(tiny_sd3, GRID, {"stepz": 3})


@pytest.mark.parametrize("image,needle", [
    (np.zeros((50, 50, 3), np.uint8), "multiples of 8"),
    (np.zeros((64, 64, 2), np.uint8), "(H, W, 3)"),
    (np.full((64, 64, 3), 3.0), "[0, 1]"),
    ("no/such/picture.png", "no image file"),
])
def test_session_source_images_follow_the_package_rules(tiny_session, image, needle):
    from explore import InputError

    with pytest.raises(InputError) as e:
        tiny_session.source("red car", image=image)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_session_fits_own_images_with_resize(tiny_sd3):
    s = EditSession(tiny_sd3, GRID, {"steps": 1}, templates="prompt", resize="crop")
    src = s.source("red car", image=np.zeros((50, 50, 3), np.uint8))
    assert src.image.size == (48, 48) and src.latent.image_size == (48, 48)
    with pytest.raises(InputError, match="resize"):
        EditSession(tiny_sd3, GRID, resize="stretch")
