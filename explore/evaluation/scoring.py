"""Scoring one edit: success, retention (split by where the kept factors are), reconstruction, SDE.

The one routine the benchmark runner, the demo and the ``edit`` command use (DESIGN §0, §3):
``success`` — the edited factor reads as the target; ``retention`` — the share of the source's
other factors still read as they were; beside it ``retention_parts``: the same share over the
edited object's other factors (``same_object``), over the other objects' factors
(``other_objects``, the leakage a two-object world shows) and over scene-wide factors such as the
background (``scene``); ``recon_accuracy`` — the factors read right on the reconstruction; the
SDE score and its parts when the source image is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..images import psnr, to_array
from .metrics import accuracy, retention, sde, success


def _share(reading: Mapping, labels: Mapping, keys: list[str]) -> float | None:
    return float(np.mean([reading.get(k) == labels[k] for k in keys])) if keys else None


def retention_parts(reading: Mapping, labels: Mapping, attribute: str, world=None) -> dict[str, float | None]:
    """Retention over the edited object's other factors, the other objects' factors and scene-wide factors."""
    others = [k for k in labels if k != attribute]
    if world is None:
        return {"same_object": None, "other_objects": None, "scene": None}
    target = world.object_of(attribute)
    same = [k for k in others if world.object_of(k) is not None and world.object_of(k) == target]
    other = [k for k in others if world.object_of(k) is not None and world.object_of(k) != target]
    scene = [k for k in others if world.object_of(k) is None]
    return {"same_object": _share(reading, labels, same), "other_objects": _share(reading, labels, other),
            "scene": _share(reading, labels, scene)}


def score_edit(scorer, attribute: str, target: str, x_edit, *, x_rec=None, x=None, labels: Mapping | None = None,
               mask=None) -> dict[str, Any]:
    """Score one edited image (and its reconstruction / source where given) with ``scorer``.

    ``labels``: the source's exact factor labels (None: retention is not measured). ``mask``: the
    edited object's mask in the source (SDE unions it with the object the scorer finds in the
    edit; None and a scorer that finds no objects: SDE is NaN and says so in ``leak``).
    """
    labels = dict(labels or {})
    world = getattr(scorer, "world", None)
    images = [x_edit] + ([x_rec] if x_rec is not None else [])
    readings = scorer.read(images)
    r_edit = readings[0]
    out: dict[str, Any] = {
        "success": success(r_edit, attribute, target),
        "retention": retention(r_edit, labels, attribute) if labels else None,
        "retention_parts": retention_parts(r_edit, labels, attribute, world) if labels else None,
        "read_edit": dict(r_edit),
    }
    if x_rec is not None:
        out["recon_accuracy"] = accuracy(readings[1], labels) if labels else None
    if x is not None and x_rec is not None:
        xs, xr, xe = (to_array(im, "float", name) for im, name in ((x, "x"), (x_rec, "x_rec"), (x_edit, "x_edit")))
        found = (scorer.object_masks([x_edit], attribute) if hasattr(scorer, "object_masks")
                 else scorer.masks([x_edit]))[0]
        union = None
        if mask is not None:
            union = mask | found if found is not None else mask
        elif found is not None:
            union = found
        p_edit, p_rec = scorer.prob([x_edit, x_rec], attribute, target)
        parts = sde(xs, xr, xe, float(p_rec), float(p_edit), union, attribute)
        out.update({"sde": parts["sde"], "E": parts["E"], "leak": parts["leak"], "R": parts["R"],
                    "recon_psnr": psnr(xr, xs)})
    return out
