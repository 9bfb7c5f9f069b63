import numpy as np
import pytest
import torch

from explore.errors import InputError, UnsupportedModelError
from explore.interp.attention import (
    FluxAttentionProcessor,
    JointAttentionProcessor,
    attention_layers,
    attention_map,
    attention_mask,
    otsu_threshold,
    record_attention,
    resolve_layers,
    upsample,
    word_token_indices,
)
from explore.pipeline.latent import encode, encode_text, velocity
from explore.pipeline.spec import family_of, spec
from explore.views.plots import attention_grid, overlay

PROMPT = "a Red circle"  # short: the tiny tokenizers keep 16 characters


def _inputs(pipe, prompts=(PROMPT,)):
    c, p = encode_text(pipe, list(prompts))
    z = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return z, c, p


def _attn_modules(pipe):
    return [pipe.transformer.get_submodule(name).attn for name in attention_layers(pipe)]


def _processors(pipe):
    return [m.processor for m in _attn_modules(pipe)]


@pytest.mark.parametrize("chunk_elements", [2**26, 100])  # one chunk, and many chunks of a few query rows
def test_explicit_processors_reproduce_the_stock_ones(tiny, chunk_elements):
    z, c, p = _inputs(tiny, [PROMPT, "a blue square"])
    t = torch.tensor([0.3, 0.8])
    base = velocity(tiny, z, t, c, p, guidance=2.0)
    ours = JointAttentionProcessor if family_of(tiny) == "sd3" else FluxAttentionProcessor
    before = _processors(tiny)
    try:
        for m in _attn_modules(tiny):  # every double block, and FLUX's single blocks
            m.set_processor(ours(chunk_elements=chunk_elements))
        explicit = velocity(tiny, z, t, c, p, guidance=2.0)
    finally:
        for m, proc in zip(_attn_modules(tiny), before):
            m.set_processor(proc)
    assert (explicit - base).abs().max() < 1e-5
    # And through record_attention, where the same processors also record.
    with record_attention(tiny, chunk_elements=chunk_elements) as store:
        recorded = velocity(tiny, z, t, c, p, guidance=2.0)
    assert (recorded - base).abs().max() < 1e-5
    assert set(store.layers()) == set(attention_layers(tiny))
    if family_of(tiny) == "flux":
        assert any(name.startswith("single_transformer_blocks") for name in store.layers())


def test_rows_of_the_full_softmax_sum_to_one(tiny):
    z, c, p = _inputs(tiny)
    with record_attention(tiny, heads="all", row_sums=True) as store:  # every text token
        velocity(tiny, z, 0.5, c, p, guidance=1.0)
    heads = tiny.transformer.config.num_attention_heads
    for key, cols in store.items():
        assert cols.shape == (1, heads, 16, c.shape[1])
        assert torch.allclose(store.row_sums[key], torch.ones(1, heads, 16), atol=1e-5)
        assert torch.allclose(cols.sum(-1), store.text_mass[key], atol=1e-5)
        # the softmax runs over image keys too: text alone gets less than the whole row
        assert (store.text_mass[key] < 1 - 1e-4).all()


def test_recorded_columns_match_an_independent_softmax(tiny_sd3):
    """Block 0 of SD3, recomputed here from the module's own weights: softmax over [image; text] keys."""
    z, c, p = _inputs(tiny_sd3)
    attn = tiny_sd3.transformer.transformer_blocks[0].attn
    seen = {}
    h = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        with record_attention(tiny_sd3, "transformer_blocks.0", token_indices=[0, 5, 20]) as store:
            velocity(tiny_sd3, z, 0.5, c, p, guidance=1.0)
    finally:
        h.remove()
    x, e = seen["hidden_states"], seen["encoder_hidden_states"]
    heads = attn.heads

    def split(y):
        return y.view(1, -1, heads, y.shape[-1] // heads).transpose(1, 2)

    q = torch.cat([attn.norm_q(split(attn.to_q(x))), attn.norm_added_q(split(attn.add_q_proj(e)))], 2)
    k = torch.cat([attn.norm_k(split(attn.to_k(x))), attn.norm_added_k(split(attn.add_k_proj(e)))], 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    expected = w[:, :, :16, 16 + torch.tensor([0, 5, 20])]
    assert torch.allclose(store[("transformer_blocks.0", 0.5)], expected, atol=1e-6)


def test_word_token_indices(tiny):
    idx = word_token_indices(tiny, PROMPT, "red")
    n_clip = tiny.tokenizer_max_length if family_of(tiny) == "sd3" else 0
    if family_of(tiny) == "sd3":
        # CLIP part (after the start token; character-level tiny tokenizer: r, e, d) and T5 part
        clip = [i for i in idx if i < n_clip]
        t5 = [i - n_clip for i in idx if i >= n_clip]
        assert clip == [2, 3, 4]
        assert len(t5) >= 3 and t5 == list(range(t5[0], t5[0] + len(t5)))
        assert max(idx) < n_clip + spec(tiny).max_sequence_length
    else:
        assert len(idx) >= 3 and max(idx) < spec(tiny).max_sequence_length
    assert word_token_indices(tiny, PROMPT, "RED") == idx  # case-insensitive
    two = word_token_indices(tiny, "red or red", "red")
    assert len(two) == 2 * len(word_token_indices(tiny, "red", "red"))  # both occurrences
    with pytest.raises(InputError, match="not in the prompt"):
        word_token_indices(tiny, PROMPT, "blue")
    with pytest.raises(InputError, match="not in the prompt"):
        word_token_indices(tiny, PROMPT, "re")  # whole words only
    with pytest.raises(InputError, match="cut off"):
        word_token_indices(tiny, "a b c d e f g h i j k l m n o p q r s t u v w x y z red", "red")


def test_word_lookup_needs_a_fast_tokenizer():
    from explore.interp.attention import _token_spans

    class SlowTokenizer:  # python-only tokenizers give no character offsets
        is_fast = False

    with pytest.raises(UnsupportedModelError, match="fast tokenizer"):
        _token_spans(SlowTokenizer(), "a red circle", [(2, 5)], 16)


def test_attention_map_shapes_and_display(tiny):
    latent = encode(tiny, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)), PROMPT)
    maps = attention_map(tiny, latent, "red", t=[0.25, 0.75], seed=3)
    assert maps.grid == (4, 4) and maps.image_size == (32, 32)
    assert set(maps.layers()) == set(attention_layers(tiny)) and maps.timesteps() == [0.25, 0.75]
    for m in maps.maps.values():
        assert m.shape == (4, 4) and np.isfinite(m).all() and (m >= 0).all() and m.sum() < 16
    assert np.isclose(maps.mean().sum(), 1.0, atol=1e-5)
    shown = maps.display()
    assert shown.shape == (32, 32) and np.isfinite(shown).all()
    again = attention_map(tiny, latent, "red", t=[0.25, 0.75], seed=3)
    assert all(np.array_equal(maps.maps[k], again.maps[k]) for k in maps.maps)  # seeded
    per_head = attention_map(tiny, latent, "red", t=0.5, layers=[0], heads="all")
    (m,) = per_head.maps.values()
    assert m.shape == (tiny.transformer.config.num_attention_heads, 4, 4)
    fig = overlay(np.zeros((32, 32, 3), dtype=np.uint8), maps.mean())
    assert len(fig.axes) == 1
    grid = attention_grid(maps, np.zeros((32, 32, 3), dtype=np.uint8))
    assert len(grid.axes) == len(maps.layers()) * 2


def test_attention_mask_is_a_boolean_image(tiny_sd3):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = attention_mask(tiny_sd3, image, PROMPT, "circle", t=(0.5,))
    assert mask.shape == (32, 32) and mask.dtype == bool and 0 < mask.sum() < mask.size
    loose = attention_mask(tiny_sd3, image, PROMPT, "circle", t=(0.5,), threshold=0.5)
    tight = attention_mask(tiny_sd3, image, PROMPT, "circle", t=(0.5,), threshold=0.9)
    assert tight.any() and not (tight & ~loose).any()  # a higher threshold keeps a subset
    with pytest.raises(InputError, match="threshold"):
        attention_mask(tiny_sd3, image, PROMPT, "circle", t=(0.5,), threshold=2.0)


def test_upsample_and_otsu():
    a = np.zeros((4, 4), dtype=np.float32)
    a[1:3, 1:3] = 1
    up = upsample(a, (16, 16))
    assert up.shape == (16, 16) and up[8, 8] == pytest.approx(1.0) and up[0, 0] == pytest.approx(0.0)
    assert upsample(np.ones((2, 4, 4)), 8).shape == (2, 8, 8)
    x = np.concatenate([np.full(100, 0.1), np.full(50, 0.9)])
    assert 0.1 <= otsu_threshold(x) < 0.9


def test_processors_are_restored_after_an_exception(tiny):
    before = _processors(tiny)
    z, c, p = _inputs(tiny)
    with pytest.raises(RuntimeError, match="boom"), record_attention(tiny, word="red", prompt=PROMPT):
        assert all(type(a) is not type(b) for a, b in zip(_processors(tiny), before))
        velocity(tiny, z, 0.5, c, p, guidance=1.0)
        raise RuntimeError("boom")
    assert all(a is b for a, b in zip(_processors(tiny), before))
    assert len(tiny.transformer._forward_pre_hooks) == 0
    with pytest.raises(InputError, match="outside"), record_attention(tiny, token_indices=[10_000]):
        velocity(tiny, z, 0.5, c, p, guidance=1.0)  # raised inside a processor
    assert all(a is b for a, b in zip(_processors(tiny), before))


def test_only_conditional_rows_are_recorded_with_cfg(tiny_sd3):
    z, c, p = _inputs(tiny_sd3, [PROMPT, PROMPT, "a blue square"])
    t = torch.tensor([0.25, 0.25, 0.75])
    with record_attention(tiny_sd3, "transformer_blocks.0", word="red", prompt=PROMPT, heads="mean") as cond:
        velocity(tiny_sd3, z, t, c, p, guidance=4.0)  # 3 conditional + 3 unconditional rows
    with record_attention(tiny_sd3, "transformer_blocks.0", word="red", prompt=PROMPT, heads="mean",
                          branch="all") as both:
        velocity(tiny_sd3, z, t, c, p, guidance=4.0)
    key = ("transformer_blocks.0", 0.25)
    assert cond[key].shape[0] == 2 and cond[("transformer_blocks.0", 0.75)].shape[0] == 1
    assert both[key].shape[0] == 4  # two conditional rows, then their two unconditional rows
    assert torch.allclose(cond[key], both[key][:2])
    assert not torch.allclose(cond[key], both[key][2:])
    with record_attention(tiny_sd3, 0, token_indices=[1], timesteps=[0.75]) as only:
        velocity(tiny_sd3, z, t, c, p, guidance=4.0)
    assert list(only) == [("transformer_blocks.0", 0.75)]


def test_only_conditional_rows_in_a_pipeline_call(tiny_sd3):
    kw = dict(num_inference_steps=2, height=32, width=32, guidance_scale=4.0, output_type="latent",
              max_sequence_length=spec(tiny_sd3).max_sequence_length)
    with record_attention(tiny_sd3, "transformer_blocks.1", word="red", prompt=PROMPT, heads="mean") as store:
        tiny_sd3(PROMPT, **kw)
    assert len(store.timesteps()) == 2 and 1.0 in store.timesteps()
    assert all(v.shape[0] == 1 for v in store.values())  # the positive half of [negative; positive]


def test_bad_arguments(tiny):
    with pytest.raises(InputError, match="no attention layer"):
        resolve_layers(tiny, "transformer_blocks.99")
    with pytest.raises(InputError, match="out of range"):
        resolve_layers(tiny, 99)
    assert resolve_layers(tiny, "transformer_blocks.0.img") == ["transformer_blocks.0"]
    with pytest.raises(InputError, match="prompt"):
        with record_attention(tiny, word="red"):
            pass
    with pytest.raises(InputError, match="heads"):
        with record_attention(tiny, heads="max"):
            pass
    with pytest.raises(InputError, match="out of range"):
        with record_attention(tiny, heads=[0, 7]):
            pass
    z, c, p = _inputs(tiny)
    with record_attention(tiny, 0, token_indices=[1, 2], heads=[1]) as store:
        velocity(tiny, z, 0.5, c, p, guidance=1.0)
    assert store[(attention_layers(tiny)[0], 0.5)].shape == (1, 1, 16, 2)
