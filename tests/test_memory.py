"""Memory estimates on the meta device (`explore.evaluation.memory`, ``bench --estimate``)."""

from __future__ import annotations

import json

import pytest
import torch

from explore.errors import InputError, ResourceError
from explore.evaluation.memory import (
    LiveBytes,
    call_pattern,
    check_fits,
    estimate,
    fits,
    fused_attention,
    preflight,
)
from explore.evaluation.memory import _bytes as weight_bytes


def test_live_bytes_counts_storages_once_and_frees_them():
    mode = LiveBytes()
    with mode:
        a = torch.empty(1000, device="meta")  # 4000 bytes
        v = a.view(10, 100)  # a view: same storage
        d = a.detach()  # an alias: same storage
        b = a * 2  # a new storage: 4000 more
        assert mode.live == 8000
        del b
        assert mode.live == 4000
        del a, v
        assert mode.live == 4000  # d still holds the storage
        del d
    assert mode.live == 0 and mode.peak == 8000


def test_fused_attention_holds_no_score_matrix():
    q = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.bfloat16)
    stock, fused = LiveBytes(), LiveBytes()
    with stock:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with fused, fused_attention():
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    scores = 2 * 4096 * 4096 * 2  # bytes of one (heads, S, S) bf16 matrix
    assert stock.peak >= scores  # the math kernel on the meta device materialises it
    assert fused.peak < scores / 10  # output + log-sum-exp only
    assert torch.nn.functional.scaled_dot_product_attention is not None


def test_weight_bytes_quantise_linear_weights_only():
    m = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.LayerNorm(128))
    full = weight_bytes(m, torch.bfloat16)
    assert full == 2 * sum(p.numel() for p in m.parameters())
    int8 = weight_bytes(m, torch.bfloat16, "int8")
    # 256x128 weights at 1 byte + one bf16 scale per row; bias and norm stay bf16
    assert int8 == 256 * 128 + 128 * 2 + 2 * (128 + 128 + 128)


def test_the_call_pattern_is_the_methods_own():
    jvp = call_pattern("tiny-sd3", "hsds", 3, "jvp")
    fd = call_pattern("tiny-sd3", "hsds", 3, "finite-difference")
    assert jvp["jvp"] == 4  # the edit direction and 3 preserved: one JVP row each
    assert "jvp" not in fd and fd["forward"] > jvp["forward"]  # finite differences: more plain rows instead
    assert set(call_pattern("tiny-sd3", "text", 3, None)) == {"forward"}  # a render: plain forwards only


@pytest.fixture(scope="module")
def sd3_text():
    return estimate("sd3-medium", "text", 512)


def test_an_estimate_adds_up(sd3_text):
    r = sd3_text
    assert r["weights_gb"]["transformer"] == pytest.approx(2 * 2.028e9 / 1e9, abs=0.01)  # bf16: 2 bytes per weight
    assert r["weights_gb"]["text_encoders"] == pytest.approx(2 * 5.58, abs=0.01)
    assert 0 < r["activations_gb"]["forward"] < 2
    resident = sum(r["weights_gb"].values()) + max(r["activations_gb"]["forward"], r["vae_decode_gb"])
    assert r["peak_gb"] == pytest.approx(resident, abs=0.1)
    assert r["peak_gb_offload"] < r["peak_gb"]


def test_quantisation_and_resolution_move_the_estimate(sd3_text):
    int8 = estimate("sd3-medium", "text", 512, quantization="int8")
    assert int8["weights_gb"]["transformer"] == pytest.approx(sd3_text["weights_gb"]["transformer"] / 2, rel=0.05)
    big = estimate("sd3-medium", "text", 1024)
    assert big["activations_gb"]["forward"] > 2 * sd3_text["activations_gb"]["forward"]


def test_unsupported_methods_and_bad_input_say_so():
    r = estimate("z-image-turbo", "fluxspace")
    assert "single-stream" in r["unsupported"]
    with pytest.raises(InputError, match="unknown architecture"):
        estimate("sd9", "hsds")
    with pytest.raises(InputError, match="quantization must be one of"):
        estimate("sd3-medium", "hsds", quantization="int3")
    with pytest.raises(InputError, match="multiple of 16"):
        estimate("sd3-medium", "hsds", 1000)


def test_a_run_that_would_not_fit_is_refused_before_it_starts(sd3_text):
    assert fits(sd3_text, 80) and not fits(sd3_text, 8)
    check_fits(sd3_text, 80)
    with pytest.raises(ResourceError, match="offload='model'"):
        check_fits(sd3_text, 8)
    assert preflight("sd3-medium", "cpu") is None  # nothing to check on a CPU


def test_bench_estimate_cli(tmp_path, capsys):
    from explore.cli import main

    out = tmp_path / "est.json"
    assert main(["bench", "--estimate", "--model", "sd3-medium", "--methods", "text", "--res", "512",
                 "--device-gb", "24", "--out", str(out)]) in (0, None)
    data = json.loads(out.read_text())
    (row,) = data["estimates"]
    assert row["model"] == "sd3-medium" and row["fits"] == {"resident": True, "offload": True}
    assert data["settings"]["computed_on"] == "meta device"
    assert "GB resident" in capsys.readouterr().out


def test_jvp_chunks_give_the_same_columns_in_fewer_rows(tiny_sd3):
    import numpy as np

    from explore.editing.directions import text_direction
    from explore.editing.loop import jvp_columns
    from explore.pipeline.latent import encode

    src = encode(tiny_sd3, (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8), "a red circle")
    keep = [text_direction(tiny_sd3, a, b, templates=["a red {}"]) for a, b in (("circle", "square"), ("small", "big"),
                                                                               ("left", "right"))]
    t = torch.tensor(0.6)
    whole = jvp_columns(tiny_sd3, src.z[0], t, src.c[0], src.p[0], keep, 1.0)
    ones = jvp_columns(tiny_sd3, src.z[0], t, src.c[0], src.p[0], keep, 1.0, chunk=1)
    assert whole.shape == ones.shape == (3, *src.z.shape[1:])
    assert torch.allclose(whole, ones, atol=1e-5, rtol=1e-4)
    assert call_pattern("tiny-sd3", "hsds", 3, "jvp", 1)["jvp"] == 1  # and the estimate sees one row per call
