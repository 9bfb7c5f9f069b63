"""Per-object masks from a DiT's own attention or concept maps, and how well each finds the objects.

Three map methods make one mask per object a caption names (`object_masks`):

- ``"segment"`` (the default): each object's map is the mean of the attention maps of the words that
  name it alone (its noun, colour, size and position words, `World.caption_objects`), read at the
  object block; the background word's map at the background block is one more map. Every map is
  upsampled and min-max scaled, and each pixel goes to the object (or background) whose map is
  highest — the objects compete, so the masks never overlap. Without a background word each
  object keeps the pixels above its own Otsu threshold, overlaps going to the higher map.
- ``"threshold"``: each object's map alone, thresholded (Otsu), as `attention_mask` does for one word.
- ``"concepts"``: ConceptAttention's concept maps (`explore.interp.concepts`) with each object's noun
  and ``"background"`` as the concepts, at the concept block; each pixel goes to the winning concept.

Blocks come from `explore.interp.attention.mask_layer`: the embedded world's choice
(``World.mask_blocks``, measured on its development seed by `concept_map_study`) or the depth rule.
`concept_map_study` measures every method's per-object IoU against the exact masks, beside the
ceiling of any map on the model's patch grid (the exact mask's coverage of each patch as the map).

`velocity_mask` is another mask source, for an *edit* rather than an object: UniEdit-Flow's
(Jiao et al., ICLR 2026, ``UniEditEulerScheduler.step``) channel mean of the target-minus-source
velocity ``v(z_t; c') - v(z_t; c)``, min-max scaled per image; `velocity_mask_study` measures its
IoU with the exact edit region beside the attention masks, on a world's benchmark items.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import atomic_write_json, atomic_write_text, envelope, save_figure
from ..pipeline.latent import encode, encode_text, flow_noise, velocity
from ..pipeline.sampling import seeded_noise
from ..pipeline.spec import spec
from ..worlds import require_world
from .attention import MASK_TIMESTEPS, attention_layers, attention_map, mask_from_map, mask_layer, upsample
from .concepts import concept_maps

METHODS = ("segment", "threshold", "concepts")


def caption_objects(pipe, prompt: str) -> tuple[dict[str, list[str]], str | None]:
    """The embedded world's objects of a caption and the background word (`World.caption_objects`)."""
    return require_world(pipe, "name the objects for a model without an embedded world: "
                               "objects={'cat': ['cat', 'black']}").caption_objects(prompt)


def _scaled(amap, size) -> np.ndarray:
    m = upsample(amap, size)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)


def segment_maps(object_maps: Mapping[str, np.ndarray], background_map: np.ndarray | None,
                 size) -> dict[str, np.ndarray]:
    """Per-object masks from patch maps ``(h, w)``: each pixel to the highest scaled map (objects and the
    background map when given); without one, each object's Otsu mask with overlaps to the higher map."""
    names = list(object_maps)
    stack = np.stack([_scaled(object_maps[k], size) for k in names])
    if background_map is not None:
        win = np.argmax(np.concatenate([stack, _scaled(background_map, size)[None]]), axis=0)
        return {k: win == i for i, k in enumerate(names)}
    win = np.argmax(stack, axis=0)
    return {k: mask_from_map(object_maps[k], size) & (win == i) for i, k in enumerate(names)}


def _check(objects, background, method):
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not objects or any(not words for words in objects.values()):
        raise InputError(f"every object needs at least one word naming it, got {dict(objects)!r}")


def object_masks(pipe, image, prompt: str, objects: Mapping[str, Sequence[str]] | None = None,
                 background: str | None = None, *, method: str = "segment", t: Sequence[float] = MASK_TIMESTEPS,
                 seed: int = 0, resize=None) -> dict[str, np.ndarray]:
    """One ``(H, W)`` bool mask per object of ``prompt`` in ``image``.

    ``objects``: ``{name: words naming it}`` (the first word is its noun, the concept for
    ``method="concepts"``); ``background``: the caption's background word, or None. Both default to
    the embedded world's reading of the caption (`caption_objects`); for other models name them,
    e.g. ``object_masks(pipe, img, "a black cat next to a brown dog on grass", {"cat": ["cat", "black"],
    "dog": ["dog", "brown"]}, "grass")``. ``method``: ``"segment"``, ``"threshold"`` or ``"concepts"``
    (module docstring). ``t``: the noise levels averaged; ``image``/``resize`` as in `explore.encode`.
    """
    if objects is None:
        objects, world_background = caption_objects(pipe, prompt)
        background = world_background if background is None else background
    _check(objects, background, method)
    latent = encode(pipe, image, prompt, resize=resize)
    size = tuple(latent.image_size)
    if method == "concepts":
        names = list(objects)
        concepts = [objects[k][0] for k in names] + ["background"]
        cm = concept_maps(pipe, latent, concepts, t=t, layers=[mask_layer(pipe, "concepts")], seed=seed)
        win = cm.segment()
        return {k: win == i for i, k in enumerate(names)}
    obj_layer = mask_layer(pipe, "object")

    def word_map(word, layer):
        return attention_map(pipe, latent, word, t=t, layers=[layer], seed=seed).mean()

    maps = {k: np.mean([word_map(w, obj_layer) for w in words], axis=0) for k, words in objects.items()}
    if method == "threshold":
        return {k: mask_from_map(m, size) for k, m in maps.items()}
    bg = None if background is None else word_map(background, mask_layer(pipe, "segment-background"))
    return segment_maps(maps, bg, size)


def velocity_map(pipe, source, edited_prompt: str, *, t: Sequence[float] = MASK_TIMESTEPS, seed: int = 0,
                 how: str = "signed") -> np.ndarray:
    """``(H, W)`` in [0, 1]: where the edited caption changes the velocity (UniEdit-Flow's mask).

    ``source``: a `JointLatent` or ``(image, prompt)``. At each ``t`` (one seeded noise), the channel
    mean of ``v(z_t; c') - v(z_t; c)`` (``how="signed"``, as published; ``"abs"``: of its absolute
    value) min-max scaled, averaged over ``t`` and upsampled bilinearly to the image size.
    """
    if how not in ("signed", "abs"):
        raise InputError(f"how must be 'signed' or 'abs', got {how!r}")
    latent = source if not isinstance(source, tuple) else encode(pipe, *source)
    ts = [float(x) for x in np.atleast_1d(np.asarray(t, dtype=np.float64))]
    z0 = latent.z[:1].float()
    eps = seeded_noise(z0.shape[1:], [seed], z0.device)
    z_t = torch.cat([flow_noise(z0, eps, tv) for tv in ts])
    c_e, p_e = encode_text(pipe, [edited_prompt])
    n = len(ts)
    c = torch.cat([latent.c[:1].float().expand(n, -1, -1), c_e.float().expand(n, -1, -1)])
    p = torch.cat([latent.p[:1].float().expand(n, -1), p_e.float().expand(n, -1)])
    with torch.no_grad():
        v = velocity(pipe, torch.cat([z_t, z_t]), torch.tensor(ts * 2), c, p, guidance=1.0)
    diff = v[n:] - v[:n]
    m = (diff.abs() if how == "abs" else diff).mean(1)
    lo = m.flatten(1).min(1).values[:, None, None]
    hi = m.flatten(1).max(1).values[:, None, None]
    m = ((m - lo) / (hi - lo + 1e-7)).mean(0).cpu().numpy()
    return np.clip(upsample(m, tuple(latent.image_size)), 0, 1)


def velocity_mask(pipe, image, prompt: str, edited_prompt: str, *, t: Sequence[float] = MASK_TIMESTEPS,
                  seed: int = 0, how: str = "signed", threshold: str | float = "otsu", resize=None) -> np.ndarray:
    """``(H, W)`` bool: the edit's region from `velocity_map` (``prompt`` -> ``edited_prompt``), thresholded
    (Otsu, or τ in [0, 1]). Beside `explore.interp.attention.object_mask` as a mask for the metric."""
    latent = encode(pipe, image, prompt, resize=resize)
    return mask_from_map(velocity_map(pipe, latent, edited_prompt, t=t, seed=seed, how=how), latent.image_size,
                         threshold)


def velocity_mask_study(pipe, n: int = 60, seed: int = 0, timesteps: Sequence[float] = MASK_TIMESTEPS,
                        out: str | Path | None = None, progress: bool = True) -> dict:
    """IoU with the exact edit region (the edited object; the background for background edits) of the
    velocity masks (signed, as UniEdit-Flow; absolute) and the attention mask (`object_mask`; its
    complement for background edits), on the first ``n`` items of the world's benchmark (the items
    ``evaluate`` edits), edited caption = the item's own (`BenchItem.edited_prompt`)."""
    from ..evaluation.items import world_benchmark
    from .attention import object_mask
    from .studies import iou

    world = require_world(pipe, "the velocity-mask study needs an embedded world's exact masks (--model shapes or "
                                "shapes-pairs)")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    t0 = time.perf_counter()
    res_px = spec(pipe).resolution
    ts = [round(float(t), 4) for t in timesteps]
    scores: dict[str, dict[str, list[float]]] = {}
    for it in tqdm(world_benchmark(world, n, seed, size=res_px), desc="velocity masks", disable=not progress):
        image, region = it.load_image(), it.load_mask()
        factor = it.attribute.rsplit(".", 1)[-1]
        if factor == "background":
            region = ~region
        latent = encode(pipe, image, it.prompt)
        found = {how: mask_from_map(velocity_map(pipe, latent, it.edited_prompt(), t=ts, seed=it.seed, how=how),
                                    (res_px, res_px)) for how in ("signed", "abs")}
        att = object_mask(pipe, image, it.prompt, it.source, it.attribute, seed=it.seed)
        found["attention"] = ~att if factor == "background" else att
        for name, m in found.items():
            scores.setdefault(name, {}).setdefault(factor, []).append(iou(m, region))
    per = {k: {f: float(np.mean(v)) for f, v in d.items()} for k, d in scores.items()}
    mean = {k: float(np.mean([x for v in d.values() for x in v])) for k, d in scores.items()}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "timesteps": ts, "threshold": "otsu",
                                               "edited_caption": "the item's own"},
                   time.perf_counter() - t0, world=world.name, iou=mean, per_factor=per)
    if out is not None:
        atomic_write_json(Path(out) / "velocity_masks.json", res)
        atomic_write_text(Path(out) / "velocity_masks.md", velocity_mask_markdown(res))
    return res


def velocity_mask_markdown(res: dict) -> str:
    factors = list(next(iter(res["per_factor"].values())))
    lines = [f"# Edit-region masks vs the exact region (IoU), {res['world']}, n = {res['settings']['n']} items, "
             f"seed {res['seed']}", "",
             "| mask | mean | " + " | ".join(factors) + " |", "|---|---|" + "---|" * len(factors)]
    for name, per in res["per_factor"].items():
        lines.append(f"| {name} | {res['iou'][name]:.3f} | " + " | ".join(f"{per[f]:.3f}" for f in factors) + " |")
    return "\n".join(lines) + "\n"


def ceiling(mask: np.ndarray, grid: tuple[int, int], taus: Sequence[float] = tuple(np.linspace(0.05, 0.95, 19))
            ) -> tuple[float, float]:
    """The IoU the exact ``mask``'s own coverage of each patch reaches as a map on ``grid`` (the best any
    map on the model's patch grid can do): with Otsu's threshold, and with the best of ``taus``."""
    from .studies import iou

    H, W = mask.shape
    h, w = grid
    frac = mask.reshape(h, H // h, w, W // w).mean((1, 3))
    return (iou(mask_from_map(frac, (H, W)), mask),
            max(iou(mask_from_map(frac, (H, W), float(tau)), mask) for tau in taus))


def concept_map_study(pipe, n: int = 48, seed: int = 0, timesteps: Sequence[float] = MASK_TIMESTEPS,
                      out: str | Path | None = None, progress: bool = True) -> dict:
    """Per-object IoU of every map method against the world's exact masks, with the choices it rests on.

    For ``n`` renders with full captions (template 0), each object of the caption (`World.caption_objects`)
    gets a mask from: the attention of its noun alone (``"noun"``, Otsu, the object block: the one-word
    `attention_mask`), its words' mean map thresholded (``"threshold"``), the segmentation against the
    other objects and the background word (``"segment"``), and the concept maps (``"concepts"``); and
    the patch-grid ``ceiling`` (Otsu and best threshold). Sweeps for choosing the blocks: ``segment``
    over every (object block, background block) pair and ``concepts`` over every block. Every word's
    attention is recorded once, at every block and ``t``.
    """
    from .studies import iou

    world = require_world(pipe, "the concept-maps study needs an embedded world's exact masks (--model shapes or "
                                "shapes-pairs)")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    t0 = time.perf_counter()
    res_px = spec(pipe).resolution
    ts = [round(float(t), 4) for t in timesteps]
    layers = attention_layers(pipe)
    default = {kind: mask_layer(pipe, kind) for kind in ("object", "segment-background", "concepts")}
    rng = random.Random(f"concept-maps-{seed}")
    scores: dict[str, list[float]] = {}
    examples = []

    def add(key, value):
        scores.setdefault(key, []).append(value)

    for i in tqdm(range(n), desc="concept maps", disable=not progress):
        scene = world.sample(rng)
        prompt = world.caption(scene, template=0, rng=rng)
        objects, bg_word = world.caption_objects(prompt)
        image = world.render(scene, res_px)
        exact = {k: world.mask(scene, res_px, next(key for key in world.labels(scene)
                                                  if world.object_of(key) == k)) for k in objects}
        latent = encode(pipe, image, prompt)
        words = {w for ws in objects.values() for w in ws} | ({bg_word} if bg_word else set())
        amaps = {w: attention_map(pipe, latent, w, t=ts, seed=seed + i) for w in sorted(words)}
        grid = next(iter(amaps.values())).mean().shape
        per_layer = {(w, la): amaps[w].mean([la]) for w in words for la in layers}
        obj_maps = {la: {k: np.mean([per_layer[(w, la)] for w in ws], axis=0) for k, ws in objects.items()}
                    for la in layers}
        cm = concept_maps(pipe, latent, [objects[k][0] for k in objects] + ["background"], t=ts, seed=seed + i)
        found = {}
        for k in objects:
            c_otsu, c_best = ceiling(exact[k], grid)
            add("ceiling (Otsu)", c_otsu)
            add("ceiling (best threshold)", c_best)
            noun = mask_from_map(per_layer[(objects[k][0], default["object"])], (res_px, res_px))
            add("noun", iou(noun, exact[k]))
            found["noun"] = {**found.get("noun", {}), k: noun}
            thr = mask_from_map(obj_maps[default["object"]][k], (res_px, res_px))
            add("threshold", iou(thr, exact[k]))
            found["threshold"] = {**found.get("threshold", {}), k: thr}
        for la in layers:
            for lb in layers:
                seg = segment_maps(obj_maps[la], per_layer[(bg_word, lb)] if bg_word else None, (res_px, res_px))
                for k in objects:
                    add(f"segment {la} / {lb}", iou(seg[k], exact[k]))
                if (la, lb) == (default["object"], default["segment-background"]):
                    found["segment"] = seg
        for use in [*layers, None]:
            win = cm.segment(None if use is None else [use])
            for j, k in enumerate(objects):
                add(f"concepts {use or 'all blocks'}", iou(win == j, exact[k]))
            if use == default["concepts"]:
                found["concepts"] = {k: win == j for j, k in enumerate(objects)}
        if len(examples) < 4:
            examples.append({"image": image, "exact": exact, "found": found, "prompt": prompt})
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    segment_sweep = {k[len("segment "):]: v for k, v in mean.items() if k.startswith("segment ")}
    concept_sweep = {k[len("concepts "):]: v for k, v in mean.items() if k.startswith("concepts ")}
    methods = {
        "noun": mean["noun"], "threshold": mean["threshold"],
        "segment": segment_sweep[f"{default['object']} / {default['segment-background']}"],
        "concepts": concept_sweep[default["concepts"]],
        "ceiling (Otsu)": mean["ceiling (Otsu)"], "ceiling (best threshold)": mean["ceiling (best threshold)"],
    }
    res = envelope(spec(pipe).model_id, seed, {"n": n, "timesteps": ts, "caption": "template 0",
                                               "threshold": "otsu", "blocks": default},
                   time.perf_counter() - t0, world=world.name, n_objects=len(scores["noun"]), iou=methods,
                   segment_blocks=segment_sweep, concept_blocks=concept_sweep,
                   best_segment=max(segment_sweep, key=segment_sweep.get),
                   best_concepts=max(concept_sweep, key=concept_sweep.get))
    if out is not None:
        from ..views.causal_plots import object_masks_figure

        atomic_write_json(Path(out) / "concept_maps.json", res)
        atomic_write_text(Path(out) / "concept_maps.md", concept_map_markdown(res))
        save_figure(Path(out) / "concept_maps.png", object_masks_figure(examples, res))
    return res


def concept_map_markdown(res: dict) -> str:
    b = res["settings"]["blocks"]
    lines = [f"# Per-object masks vs exact masks (IoU), {res['world']}, n = {res['settings']['n']} renders "
             f"({res['n_objects']} objects), seed {res['seed']}", "",
             f"Blocks: objects {b['object']}, background (segment) {b['segment-background']}, concept maps "
             f"{b['concepts']}; every t of {res['settings']['timesteps']}.", "",
             "| method | mean IoU |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["iou"].items()]
    lines += ["", f"Best on this seed: segment {res['best_segment']} "
              f"({res['segment_blocks'][res['best_segment']]:.3f}); concept maps {res['best_concepts']} "
              f"({res['concept_blocks'][res['best_concepts']]:.3f}).", "",
              "| concept maps at | IoU |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["concept_blocks"].items()]
    return "\n".join(lines) + "\n"


__all__ = ["METHODS", "caption_objects", "ceiling", "concept_map_markdown", "concept_map_study", "object_masks",
           "segment_maps", "velocity_map", "velocity_mask", "velocity_mask_markdown", "velocity_mask_study"]
