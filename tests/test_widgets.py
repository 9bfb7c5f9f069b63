"""explore.views.widgets: the panels' reactions and one-line errors (no browser needed)."""

import io

import pytest
from PIL import Image

from explore.errors import ExploreError, InputError
from explore.views.session import EditSession
from explore.views.widgets import AttentionPanel, EditPanel, GeometryPanel, ProbePanel, SteeringPanel

GRID = (0.0, 1.0, 2.0)
FAST = {"steps": 2, "t_render": 0.1}  # few optimisation steps, a short render


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_second_slider_move_to_cached_strength_does_not_call_the_model(tiny_sd3, count_calls):
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


def test_panel_sweep_makes_slider_moves_lookups(tiny_sd3, count_calls):
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


def test_attention_panel(shapes_session, count_calls):
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
    from explore.interp.probe import collect, probe_all
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


def test_metric_panel_scores_an_item_and_redraws(shapes_session):
    from explore.evaluation.items import shapes_benchmark
    from explore.evaluation.scorers import get_scorer
    from explore.views.widgets import MetricPanel

    items = shapes_benchmark(6, seed=3)
    panel = MetricPanel(shapes_session, items, get_scorer("shapes"), method="dds", strength=1.0)
    assert panel.last_error is None, panel.status.value
    first = panel.metric_image.value
    assert first and "SDE =" in panel.scores.value and "retention" in panel.scores.value
    panel.strength.value = 2.0
    assert panel.metric_image.value != first and panel.last_error is None
    panel.item.value = 3
    assert panel.last_error is None and items[3].attribute in panel.status.value


def test_edit_panel_composed_edit(shapes_session):
    cap = "a large red circle at the top left on a gray background"
    panel = EditPanel(shapes_session, [cap], attribute="color", target="blue", strength=1.0)
    single = panel.result_png
    panel.set(also=("size", "small"))
    assert panel.last_error is None, panel.status.value
    key = panel.key()
    assert key.also == (("size", "large", "small", 1.0),) and "size" not in key.preserve
    assert "color: red → blue + size: large → small" in panel.status.value and panel.result_png != single
    assert panel.preserve["size"].disabled
    panel.set(also=None)
    assert panel.key().also == ()


def test_session_defaults_to_auto_preserve_without_a_factor_table(tiny_session):
    src = tiny_session.source("red car", seed=0)
    key = tiny_session.plan(src, "color", "blue", "hsds", source_value="red")
    assert key.preserve == ("auto",)
    assert tiny_session.plan(src, "color", "blue", "hsds", "auto, car>truck", source_value="red").preserve == (
        "auto", ("car", "truck"))
