"""Quantised transformers (`load_pipeline(..., quantization=...)`): through diffusers' own configs.

torchao's int8 weight-only scheme runs on a CPU and keeps input gradients, so the CPU tests measure
what quantisation does to what HSDS needs: the Hessian columns (exact JVPs) and the input gradient.
bitsandbytes (nf4 / int8) runs on CUDA only: those tests are `gpu`-marked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explore
from explore.editing.directions import text_direction
from explore.editing.loop import jvp_columns
from explore.errors import InputError
from explore.pipeline.latent import encode, velocity
from explore.pipeline.quantize import quantization_of

# int8 weight-only rounds each weight to 1/127 of its row's largest |w|: about 0.2-0.4 % relative error per
# weight, which averages down over a layer's inputs. Measured on tiny-sd3 (seed 0, saved and reloaded through
# diffusers' TorchAoConfig, torchao 0.18, CPU): velocity 0.76 % relative, Hessian columns (JVP) 0.81 %, input
# gradient 0.56 %, a 2-step HSDS edit's dz 1.0 %. The bounds leave 3-10x headroom and still fail a scheme that
# drops a layer, the text stream or the gradient (~100 %).
JVP_TOL = 0.05
GRAD_TOL = 0.02
VELOCITY_TOL = 0.02


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """tiny-sd3 saved to a folder, loaded plain and int8-quantised from it (the real-model path)."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-sd3"
    explore.load_pipeline("tiny-sd3").save_pretrained(folder)
    plain = explore.load_pipeline(str(folder))
    quant = explore.load_pipeline(str(folder), quantization="int8")
    return plain, quant


@pytest.fixture(scope="module")
def case(pair):
    plain, _ = pair
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    src = encode(plain, image, "a red circle")
    keep = [text_direction(plain, a, b, templates=["a red {}"]) for a, b in (("circle", "square"), ("small", "big"))]
    return src, keep


def test_int8_quantises_the_transformer_only(pair):
    plain, quant = pair
    assert quantization_of(plain) is None and quantization_of(quant) == "int8"
    lin = next(m for m in quant.transformer.modules() if isinstance(m, torch.nn.Linear))
    assert type(lin.weight.data) is not torch.Tensor  # torchao's quantised tensor subclass holds the weight
    # the text encoders and the VAE stay as they were
    assert all(type(p) is torch.nn.Parameter for p in quant.vae.parameters())


def test_int8_velocity_and_jvp_columns_match_the_unquantised(pair, case):
    plain, quant = pair
    src, keep = case
    t = torch.tensor(0.6)
    z_t = src.z[0]
    v = {name: velocity(pipe, z_t[None], t[None], src.c, src.p) for name, pipe in (("plain", plain), ("int8", quant))}
    assert _rel(v["int8"], v["plain"]) < VELOCITY_TOL
    cols = {name: jvp_columns(pipe, z_t, t, src.c[0], src.p[0], keep, 1.0)
            for name, pipe in (("plain", plain), ("int8", quant))}
    assert cols["plain"].shape == (2, *z_t.shape)
    assert _rel(cols["int8"], cols["plain"]) < JVP_TOL
    assert _rel(cols["int8"], torch.zeros_like(cols["int8"])) > 0.5  # not a zero column that passes by chance


def test_int8_keeps_the_input_gradient(pair, case):
    plain, quant = pair
    src, _ = case
    grads = {}
    for name, pipe in (("plain", plain), ("int8", quant)):
        z = src.z.clone().requires_grad_(True)
        from explore.pipeline.latent import transformer_call

        with torch.enable_grad():
            out = transformer_call(pipe, z, torch.tensor([0.6]), src.c, src.p)
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads[name] = z.grad
    assert grads["int8"] is not None and torch.isfinite(grads["int8"]).all()
    assert _rel(grads["int8"], grads["plain"]) < GRAD_TOL


def test_an_int8_edit_runs_and_stays_close(pair, case):
    plain, quant = pair
    src, keep = case
    d = text_direction(plain, "red", "blue", templates=["a {} circle"])
    out = {name: explore.edit(pipe, src, d, 1.0, "hsds", preserve=keep, seed=0, steps=2, hessian="jvp")
           for name, pipe in (("plain", plain), ("int8", quant))}
    assert _rel(out["int8"].dz, out["plain"].dz) < 0.1


def test_gpu_only_schemes_are_refused_on_the_cpu_with_the_alternative():
    with pytest.raises(InputError, match="GPU only.*'int8'"):
        explore.load_pipeline("tiny-sd3", quantization="nf4")
    with pytest.raises(InputError, match="quantization must be one of"):
        explore.load_pipeline("tiny-sd3", quantization="int3")


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["nf4", "bnb-int8", "int8", "fp8"])
def test_gpu_schemes_keep_velocity_and_jvp_columns(scheme, tmp_path):
    if scheme in ("nf4", "bnb-int8"):
        pytest.importorskip("bitsandbytes")
    folder = tmp_path / "tiny-sd3"
    explore.load_pipeline("tiny-sd3").save_pretrained(folder)
    plain = explore.load_pipeline(str(folder), device="cuda", dtype=torch.bfloat16)
    quant = explore.load_pipeline(str(folder), device="cuda", dtype=torch.bfloat16, quantization=scheme)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    src = encode(plain, image, "a red circle")
    keep = [text_direction(plain, "circle", "square", templates=["a red {}"])]
    t = torch.tensor(0.6, device="cuda")
    a = jvp_columns(plain, src.z[0], t, src.c[0], src.p[0], keep, 1.0)
    b = jvp_columns(quant, src.z[0], t, src.c[0], src.p[0], keep, 1.0)
    # 4-bit weights: about 10x int8's rounding; bf16 adds its own 0.4 %
    assert _rel(b.float(), a.float()) < (0.3 if scheme == "nf4" else 0.1)
