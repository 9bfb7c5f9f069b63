"""explore.widgets: the session's caches, the panels' reactions, one-line errors (no browser needed)."""

import contextlib
import io
import warnings

import numpy as np
import pytest

from explore.errors import ExploreError, InputError
from explore.widgets import (
    AttentionPanel,
    EditPanel,
    EditSession,
    GeometryPanel,
    ProbePanel,
    SteeringPanel,
    labels_from_caption,
    measure_latency,
    one_line,
    parse_pairs,
    png_bytes,
    shapes_captions,
    strength_grid,
)

GRID = (0.0, 1.0, 2.0)
FAST = {"steps": 2, "t_render": 0.1}  # few optimisation steps, a short render


@contextlib.contextmanager
def count_calls(pipe):
    """Count transformer forward calls (an instance attribute shadows the class's forward, removed after)."""
    tr = pipe.transformer
    calls = []
    original = tr.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    tr.forward = forward
    try:
        yield calls
    finally:
        del tr.forward


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


@pytest.fixture()
def tiny_session(tiny_sd3):
    # templates="prompt": directions swap the word in the source prompt (the tiny tokenizers are 16 characters long)
    return EditSession(tiny_sd3, GRID, FAST, templates="prompt")


@pytest.fixture()
def shapes_session(shapes_pipe):
    return EditSession(shapes_pipe, GRID, FAST, n_templates=8)


# ---------------------------------------------------------------------------------------------
# Small pure functions
# ---------------------------------------------------------------------------------------------


def test_strength_grid():
    assert strength_grid(2.0, 0.25) == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    assert strength_grid(1.0, 0.5, start=-1.0) == (-1.0, -0.5, 0.0, 0.5, 1.0)
    with pytest.raises(InputError):
        strength_grid(2.0, 0.0)
    with pytest.raises(InputError):
        strength_grid(float("nan"), 0.5)


def test_png_bytes_upscales_small_images_nearest():
    import numpy as np

    img = np.zeros((64, 64, 3), np.uint8)
    img[:32] = 255
    data = png_bytes(img, 192)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_size(data) == (192, 192)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        vals = set(np.asarray(im.convert("L")).ravel().tolist())
    assert vals == {0, 255}  # NEAREST: no blurred grey at the edge


def test_caption_parsing_and_pairs():
    assert labels_from_caption("a small red circle at the top left on a gray background") == {
        "shape": "circle", "color": "red", "size": "small", "hpos": "left", "vpos": "top", "background": "gray"}
    assert labels_from_caption("a blue square") == {"shape": "square", "color": "blue"}
    with pytest.raises(InputError, match="vocabulary"):
        labels_from_caption("a small red dog")
    with pytest.raises(InputError, match="2 color values"):
        labels_from_caption("a red blue circle")
    assert parse_pairs("red>blue, day -> night") == [("red", "blue"), ("day", "night")]
    with pytest.raises(InputError, match="word pair"):
        parse_pairs("red")
    assert one_line(ValueError("first\nsecond")) == "first"
    caps = shapes_captions(5, seed=1)
    assert len(set(caps)) == 5 and all(labels_from_caption(c) for c in caps)


# ---------------------------------------------------------------------------------------------
# EditSession: caching
# ---------------------------------------------------------------------------------------------


def test_session_caches_sources_sweeps_and_edits(tiny_session):
    s = tiny_session
    src = s.source("red car", seed=0)
    assert s.source("red car", seed=0) is src  # cached encoding
    assert s.source("red car", seed=1) is not src
    key = s.plan(src, "color", "blue", "hsds", source_value="red")
    assert key.preserve == () and dict(key.settings)["steps"] == 2

    sw = s.sweep(key)
    assert sw.strengths == list(GRID)
    with count_calls(s.pipe) as calls:
        for strength in GRID:  # slider moves on the grid: lookups only
            fr = s.frame(key, strength)
            assert fr.cached and fr.origin == "sweep"
        assert s.sweep(key) is sw
    assert calls == []

    with count_calls(s.pipe) as calls:
        fresh = s.frame(key, 0.5)  # off the grid: one fresh edit
    assert not fresh.cached and fresh.origin == "edit" and len(calls) > 0
    with count_calls(s.pipe) as calls:
        again = s.frame(key, 0.5)
    assert calls == [] and again.cached and again.image is fresh.image


def test_second_slider_move_to_cached_strength_does_not_call_the_model(tiny_sd3):
    session = EditSession(tiny_sd3, GRID, FAST, templates="prompt")
    panel = EditPanel(session, ["red car"], source_word="red", target="blue", strength=1.0)
    assert panel.last_error is None, panel.status.value
    first = panel.result_png
    assert first and png_size(first)[0] >= 192
    panel.strength.value = 2.0  # not cached yet: one edit
    second = panel.result_png
    assert second != first
    with count_calls(tiny_sd3) as calls:
        panel.strength.value = 1.0  # visited before: cached
    assert calls == [] and panel.result_png == first
    assert "cached" in panel.status.value


def test_panel_sweep_makes_slider_moves_lookups(tiny_sd3):
    session = EditSession(tiny_sd3, GRID, FAST, templates="prompt")
    panel = EditPanel(session, ["red car"], source_word="red", target="blue", strength=0.0)
    assert panel.strip_image.value == b""
    panel.run_sweep()
    assert panel.last_error is None, panel.status.value
    assert panel.strip_image.value  # the strip of the whole sweep is shown
    with count_calls(tiny_sd3) as calls:
        for s in (2.0, 1.0, 0.0):
            panel.strength.value = s
            assert "cached" in panel.status.value
    assert calls == []
    assert session.stats["sweeps"] == 1


def test_session_rejects_unknown_settings(tiny_sd3):
    with pytest.raises(InputError, match="unknown edit setting"):
        EditSession(tiny_sd3, GRID, {"stepz": 3})


# ---------------------------------------------------------------------------------------------
# Errors: one line in the status label
# ---------------------------------------------------------------------------------------------


def _assert_one_line_error(panel, *needles):
    assert isinstance(panel.last_error, ExploreError), panel.last_error
    text = panel.status.value
    assert "⚠" in text and "Traceback" not in text and "\n" not in text
    assert "explore-status-error" in panel.status._dom_classes
    for n in needles:
        assert n in text, text


def test_tiny_panel_errors_show_one_line(tiny_sd3):
    session = EditSession(tiny_sd3, GRID, FAST, templates="prompt")
    panel = EditPanel(session, ["red car"], source_word="red", target="blue")
    good = panel.result_png
    panel.set(source_word="green")  # not in the prompt
    _assert_one_line_error(panel, "does not contain the word")
    panel.set(source_word="red", target="red")
    _assert_one_line_error(panel, "already")
    panel.set(target="")
    _assert_one_line_error(panel, "type the word")
    panel.set(target="blue", preserve="oops")
    _assert_one_line_error(panel, "word pair")
    panel.set(prompt="   ")
    _assert_one_line_error(panel, "empty")
    assert panel.result_png == good  # the last good image stays
    panel.set(prompt="red car", preserve="")
    assert panel.last_error is None and "⚠" not in panel.status.value
    assert "explore-status-error" not in panel.status._dom_classes
    with pytest.raises(InputError, match="unknown panel setting"):
        panel.set(colour="blue")


def test_shapes_panel_errors_show_one_line(shapes_session):
    panel = EditPanel(shapes_session, ["a small red circle at the top left on a gray background"], attribute="color",
                      target="blue", strength=1.0)
    assert panel.last_error is None, panel.status.value
    panel.set(target="red")  # the source is red already
    _assert_one_line_error(panel, "already", "pick a target")
    panel.set(prompt="a small red dog")
    _assert_one_line_error(panel, "vocabulary")
    panel.set(prompt="a red blue circle")
    _assert_one_line_error(panel, "name one")


def test_shapes_panel_targets_preserve_and_methods(shapes_session):
    cap = "a large blue square at the bottom right on a white background"
    panel = EditPanel(shapes_session, [cap], attribute="color", target="red", strength=1.0)
    assert panel.last_error is None, panel.status.value
    src = panel._source
    assert src.how == "render" and src.labels["color"] == "blue" and src.labels["shape"] == "square"
    assert "blue" not in panel.target.options and panel.target.value == "red"
    assert panel.preserve["color"].disabled and not panel.preserve["shape"].disabled
    assert panel.key().preserve == ("shape", "size", "hpos", "vpos", "background")
    panel.set(attribute="size")
    assert list(panel.target.options) == ["small"] and panel.preserve["color"].value
    assert not panel.preserve["color"].disabled and panel.preserve["size"].disabled
    panel.set(preserve=["shape"])
    assert panel.key().preserve == ("shape",)
    panel.set(method="dds")
    assert panel.key().preserve == ()  # only HSDS and "image" use preserved directions
    for m in ("sds", "text"):  # hsds and dds ran above; "image" is HSDS rendered with (c, p)
        panel.set(method=m)
        assert panel.last_error is None, (m, panel.status.value)
        assert panel.trace_image.value and panel.reconstruction_image.value


# ---------------------------------------------------------------------------------------------
# The other panels
# ---------------------------------------------------------------------------------------------


def test_geometry_panel(shapes_session):
    s = shapes_session
    dirs = [s.direction("color", "red", "blue"), s.direction("color", "blue", "red"),
            s.direction("shape", "circle", "square"), s.direction("size", "small", "large")]
    panel = GeometryPanel(s, dirs, "a small red circle at the top left on a gray background", projections=("pca",),
                          method="text")
    assert panel.last_error is None, panel.status.value
    before_map, before_edit = panel.map_image.value, panel.edit_image.value
    assert before_map and before_edit
    panel.direction.value = "shape-circle-to-square"
    assert panel.last_error is None, panel.status.value
    assert panel.map_image.value != before_map and panel.edit_image.value != before_edit
    panel.kind.value = "dp"
    assert panel.last_error is None


def test_attention_panel(shapes_session):
    panel = AttentionPanel(shapes_session, "a small red circle at the top left on a gray background",
                           timesteps=(0.3, 0.6))
    assert panel.last_error is None, panel.status.value
    assert set(panel.word.options) == {"small", "red", "circle", "top", "left", "gray"}
    assert list(panel.layer.options)[0] == "mean" and len(panel.layer.options) == 7
    first = panel.overlay_image.value
    assert first and panel.grid_image.value
    with count_calls(shapes_session.pipe) as calls:
        panel.layer.value = "2"
        panel.t.value = 0.6
    assert calls == [] and panel.overlay_image.value != first  # one model call per word, sliders look up


def test_probe_and_steering_panels(shapes_session):
    from explore.probe import collect, probe_all
    from explore.shapes.world import sample_scene

    pipe = shapes_session.pipe
    scenes = [sample_scene(i) for i in range(24)]
    sites = ["transformer_blocks.1.img", "transformer_blocks.3.img"]
    ds = collect(pipe, scenes, sites=sites, timesteps=(0.5,), progress=False)
    res = probe_all(ds, factors=["color", "size"])
    probe = ProbePanel(res)
    assert probe.last_error is None and probe.plot_image.value
    probe.factors.value = ("size",)
    assert probe.last_error is None
    probe.factors.value = ()
    _assert_one_line_error(probe, "at least one factor")

    steer = SteeringPanel(shapes_session, res, "a small red circle at the top left on a gray background", ds,
                          method="text")
    assert steer.last_error is None, steer.status.value
    assert "red" not in steer.value.options
    first = steer.compare_image.value
    steer.alpha.value = 0.0
    assert steer.compare_image.value != first


def test_measure_latency_keys(tiny_sd3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = measure_latency(tiny_sd3, settings=FAST, strengths=GRID, repeats=1)
    for k in ("cached_move_s", "cached_move_max_s", "fresh_edit_s", "sweep_s"):
        assert out[k] is not None and out[k] >= 0
    assert out["strengths"] == list(GRID)


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
