"""Concept maps (`explore.interp.concepts`, ConceptAttention): exact, and invisible to the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explore.errors import InputError, UnsupportedModelError
from explore.interp.concepts import concept_maps, concept_stream
from explore.pipeline.families import family
from explore.pipeline.latent import encode_text, velocity


def test_the_concept_stream_leaves_the_prediction_unchanged(shapes_pipe):
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    c, p = encode_text(shapes_pipe, ["a red circle", "a blue square"])
    t = torch.tensor([0.3, 0.8])
    plain = velocity(shapes_pipe, z, t, c, p, guidance=2.0)
    with concept_stream(shapes_pipe, ["circle", "square", "background"]) as store:
        with_concepts = velocity(shapes_pipe, z, t, c, p, guidance=2.0)
    assert torch.equal(plain, with_concepts)  # nothing attends to the concept tokens
    assert len(store) == 6 * 2 and all(m.shape == (1, 64, 3) for m in store.values())  # 6 blocks x 2 t, cond rows
    m = next(iter(store.values()))
    assert torch.allclose(m.sum(-1), torch.ones(1, 64))  # a softmax over the concepts


def test_a_concept_step_with_the_text_tokens_as_concepts_is_the_text_stream(shapes_pipe):
    """Fed the text tokens themselves, the concept stream computes exactly what the text stream does."""
    block = shapes_pipe.transformer.transformer_blocks[2]
    seen = {}

    def pre(module, args, kwargs):
        seen["call"] = (args, kwargs)

    def to_out(module, args):
        seen.setdefault("img", args[0])

    def to_add(module, args):
        seen.setdefault("txt", args[0])

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True),
               block.attn.to_out[0].register_forward_pre_hook(to_out),
               block.attn.to_add_out.register_forward_pre_hook(to_add)]
    try:
        c, p = encode_text(shapes_pipe, ["a red circle"])
        velocity(shapes_pipe, torch.zeros(1, 4, 16, 16), torch.tensor([0.5]), c, p, guidance=1.0)
    finally:
        for h in handles:
            h.remove()
    args, kwargs = seen["call"]
    o_img, o_con, out = family(shapes_pipe).concept_step(block, args, kwargs, kwargs["encoder_hidden_states"])
    assert torch.equal(o_img, seen["img"]) and torch.equal(o_con, seen["txt"])
    assert torch.equal(out, block(*args, **kwargs)[0])


def test_concept_maps_segment_an_image(shapes_pipe):
    import random

    from explore.worlds import world_of

    world = world_of(shapes_pipe)
    scene = world.sample(random.Random(0))
    labels = world.labels(scene)
    maps = concept_maps(shapes_pipe, (world.render(scene, 64), world.caption(scene, template=0)),
                        [labels["shape"], "background"], t=(0.5, 0.7))
    assert maps.grid == (8, 8) and len(maps.maps) == 6 * 2
    seg = maps.segment()
    assert seg.shape == (64, 64) and set(np.unique(seg)) <= {0, 1}
    with pytest.raises(InputError, match="distinct"):
        concept_maps(shapes_pipe, (world.render(scene, 64), "a red circle"), ["circle", "circle"])


def test_flux_concept_steps_are_the_text_stream_in_double_and_single_blocks(tiny_flux):
    """FLUX: the concept stream changes nothing, and fed the text tokens it is the text stream exactly,
    through a double-stream block (text weights) and a single-stream block (shared weights)."""
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    c, p = encode_text(tiny_flux, ["a red circle", "a blue square"])
    t = torch.tensor([0.3, 0.8])
    plain = velocity(tiny_flux, z, t, c, p, guidance=2.0)
    with concept_stream(tiny_flux, ["circle", "square", "background"]) as store:
        assert torch.equal(plain, velocity(tiny_flux, z, t, c, p, guidance=2.0))
    # one double and two single blocks x 2 t, the maps of the 8 x 8 packed image tokens
    assert len(store) == 3 * 2 and all(m.shape == (1, 64, 3) for m in store.values())
    for name in ("transformer_blocks.0", "single_transformer_blocks.1"):
        block = tiny_flux.transformer.get_submodule(name)
        seen: dict = {}

        def keep(key, pick, seen=seen):
            return lambda *hook_args: seen.setdefault(key, pick(*hook_args))

        handles = [block.register_forward_pre_hook(keep("call", lambda m, a, kw: (a, kw)), with_kwargs=True),
                   block.attn.register_forward_hook(keep("attn", lambda m, a, kw, out: out), with_kwargs=True)]
        if hasattr(block, "norm1_context"):
            handles.append(block.attn.to_out[0].register_forward_pre_hook(keep("img", lambda m, a: a[0])))
            handles.append(block.attn.to_add_out.register_forward_pre_hook(keep("txt", lambda m, a: a[0])))
        try:
            velocity(tiny_flux, torch.zeros(1, 4, 16, 16), torch.tensor([0.5]), c[:1], p[:1], guidance=1.0)
        finally:
            for h in handles:
                h.remove()
        args, kwargs = seen["call"]
        txt = kwargs["encoder_hidden_states"]
        o_img, o_con, out = family(tiny_flux).concept_step(block, args, kwargs, txt)
        if "img" in seen:
            img_ref, txt_ref = seen["img"], seen["txt"]
        else:  # a single block's attention output is [text; image] before the shared projection
            img_ref, txt_ref = seen["attn"][:, txt.shape[1]:], seen["attn"][:, : txt.shape[1]]
        assert torch.equal(o_img, img_ref) and torch.equal(o_con, txt_ref)
        assert torch.equal(out, block(*args, **kwargs)[0])  # the block's text stream out


def test_families_without_a_concept_step_say_so():
    from explore.pipeline.families.qwenimage import QwenImage

    with pytest.raises(UnsupportedModelError, match="concept maps are not implemented for qwen"):
        QwenImage().concept_step(None, (), {}, None)
