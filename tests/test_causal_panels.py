"""The causal panels of notebook 07 (`explore.views.causal_panels`): they redraw, read back, and refuse clearly."""

from __future__ import annotations

import pytest

import explore
from explore.errors import InputError
from explore.interp.lens import BASELINE, image_sites
from explore.views.causal_panels import LensPanel, MaskPanel, PatchPanel


def test_patch_panel_reads_each_intervention_back(shapes_pipe):
    panel = PatchPanel(shapes_pipe, seed=0, factor="hpos", steps=2)
    assert panel.last_error is None and "hpos reads" in panel.verdict.value
    first = panel.result_image.value
    assert first and panel.corrupted_image.value and panel.clean_image.value
    panel.site.value = panel.site.options[-1]
    panel.intervention.value = "bypass"
    assert panel.last_error is None and panel.message.startswith("bypass")
    assert len(panel._results) == 3  # one generation per (site, window, intervention) shown
    with pytest.raises(InputError, match="unknown factor"):
        PatchPanel(shapes_pipe, factor="weight")


def test_lens_panel_steps_through_every_block(shapes_pipe):
    panel = LensPanel(shapes_pipe, seed=1, timesteps=(0.5,))
    assert list(panel.block.options) == [BASELINE, *image_sites(shapes_pipe)]
    last = panel.lens_image.value
    panel.block.value = panel.block.options[1]
    assert panel.last_error is None and panel.lens_image.value != last
    assert panel.reading.value.startswith("reads: ") and "background" in panel.reading.value


def test_mask_panel_scores_each_object(tiny_sd3):
    pairs = explore.load_pipeline("shapes-pairs")
    panel = MaskPanel(pairs, seed=2)
    assert panel.scores.value.count("IoU") == 2 and panel.last_error is None
    panel.method.value = "threshold"
    assert panel.last_error is None and set(panel._cache[2]["masks"]) == {"segment", "threshold"}
    with pytest.raises(InputError, match="embedded world"):
        MaskPanel(tiny_sd3)
