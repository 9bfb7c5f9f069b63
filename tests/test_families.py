"""Model families as adapters: the registry, and one behaviour suite every registered family runs.

The suite is parametrised over the families with a tiny pipeline (SD3, FLUX.1) and a toy family
registered from one file (`tests/toy_family.py`); nothing in it branches on a family's name.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_family import Toy  # tests/ is on sys.path (rootdir-relative, no package)

import explore
from explore.editing.directions import text_direction
from explore.editing.objectives import project_out
from explore.errors import DirectionMismatchError, UnsupportedModelError
from explore.interp.attention import record_attention
from explore.interp.hooks import run_with_cache
from explore.pipeline import families
from explore.pipeline.latent import encode_text, velocity
from explore.pipeline.sampling import latent_shape, seeded_noise
from explore.pipeline.spec import ModelSpec, attach_spec, spec
from explore.pipeline.tiny import TINY_RES

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def toy():
    fam = families.register(Toy())
    pipe, sampler = fam.tiny(seed=0)
    attach_spec(pipe, ModelSpec("tiny-toy", fam.name, TINY_RES, 16, sampler))
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    families.unregister(fam)


NEW = {"flux2": "tiny_flux2", "flux2-dev": "tiny_flux2_dev", "qwen-image": "tiny_qwen_image",
       "z-image": "tiny_z_image"}


@pytest.fixture(scope="module")
def new_families():
    import explore.pipeline.tiny as tiny

    return {name: getattr(tiny, builder)(seed=0) for name, builder in NEW.items()}


@pytest.fixture(params=["sd3", "flux", "toy", *NEW])
def pipe(request, tiny_sd3, tiny_flux, toy, new_families):
    return {"sd3": tiny_sd3, "flux": tiny_flux, "toy": toy, **new_families}[request.param]


def test_the_registry_knows_every_family_by_its_transformer_class(tiny_sd3, tiny_flux, toy):
    assert families.family(tiny_sd3).name == "sd3" and families.family(tiny_flux).name == "flux"
    assert families.family(toy).name == "toy" and families.REGISTRY["ToyTransformer"].name == "toy"

    class Unknown:
        transformer = torch.nn.Linear(1, 1)

    with pytest.raises(UnsupportedModelError, match="SD3Transformer2DModel.*FluxTransformer2DModel"):
        families.family(Unknown())


def test_no_family_is_named_outside_the_families_folder():
    pattern = re.compile(r"""family_of\(|["'](sd3|flux)["']""")
    hits = []
    for path in (ROOT / "explore").rglob("*.py"):
        if "families" in path.parts:
            continue
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert not hits, hits


# ---------------------------------------------------------------------------------------------
# The shared behaviour suite
# ---------------------------------------------------------------------------------------------


def test_generate_is_the_pipelines_own_call(pipe):
    fam = families.family(pipe)
    s = spec(pipe)
    shape = latent_shape(pipe, TINY_RES, TINY_RES)
    z_T = seeded_noise(shape, [3], "cpu")
    _, ours = explore.generate(pipe, PROMPT, seed=3, steps=2, return_latents=True, output_type="np")
    ref = pipe(prompt=PROMPT, latents=fam.pipeline_latents(z_T), num_inference_steps=2, height=TINY_RES,
               width=TINY_RES, max_sequence_length=s.max_sequence_length, output_type="latent",
               **fam.pipeline_kwargs(s.guidance)).images
    ref = fam.from_pipeline_latents(ref, shape[1], shape[2], pipe)
    assert torch.allclose(ours, ref.float(), atol=1e-4), (ours - ref).abs().max()


def test_strength_zero_reproduces_the_reconstruction(pipe):
    image = explore.generate(pipe, PROMPT, seed=1, steps=2)[0]
    src = explore.encode(pipe, image, PROMPT)
    d = text_direction(pipe, "red", "blue", templates=["a {} circle"])
    kw = dict(method="hsds", preserve=[("circle", "square")], steps=2, seed=2)
    r0 = explore.edit(pipe, src, d, 0.0, **kw)
    r1 = explore.edit(pipe, src, d, 1.0, **kw)
    assert torch.equal(r0.latent.z, src.z)
    assert np.abs(np.asarray(r1.reconstruction, int) - np.asarray(r0.image, int)).max() <= 1


def test_the_hsds_update_is_orthogonal_to_the_preserved_columns(pipe):
    """Columns h_j = [v(c + δΔc_j) - v(c)] / δ of this family's model; HSDS's edit part after the
    projection has no component along them."""
    torch.manual_seed(0)
    z_t = torch.randn(1, *latent_shape(pipe, TINY_RES, TINY_RES))
    c, p = encode_text(pipe, PROMPT)
    c, p = c.float(), p.float()
    edit = text_direction(pipe, "red", "blue", templates=["a {} circle"])
    keep = [text_direction(pipe, "circle", "square", templates=["a red {}"]),
            text_direction(pipe, "small", "large", templates=["a {} red circle"])]
    g = spec(pipe).guidance
    base = velocity(pipe, z_t, 0.5, c, p, guidance=g)
    h = torch.stack([((velocity(pipe, z_t, 0.5, c + 0.1 * k.dc, p + 0.1 * k.dp, guidance=g) - base) / 0.1).flatten()
                     for k in keep])
    g_edit = (velocity(pipe, z_t, 0.5, c + edit.dc, p + edit.dp, guidance=g) - base).flatten()
    kept, removed = project_out(g_edit, h)
    assert removed.norm() > 0 and (h @ kept).abs().max() < 1e-4 * g_edit.norm() * h.norm(dim=1).max()


def test_recorded_attention_equals_the_stock_processor(pipe):
    torch.manual_seed(0)
    z = torch.randn(2, *latent_shape(pipe, TINY_RES, TINY_RES))
    c, p = encode_text(pipe, [PROMPT, "a blue square"])
    t = torch.tensor([0.3, 0.8])
    base = velocity(pipe, z, t, c, p, guidance=2.0)
    with record_attention(pipe) as store:
        recorded = velocity(pipe, z, t, c, p, guidance=2.0)
    assert (recorded - base).abs().max() < 1e-5 and len(store.layers()) > 0


def test_hooks_read_every_stream(pipe):
    torch.manual_seed(0)
    z = torch.randn(1, *latent_shape(pipe, TINY_RES, TINY_RES))
    c, p = encode_text(pipe, PROMPT)
    _, cache = run_with_cache(pipe, lambda: velocity(pipe, z, 0.5, c, p, guidance=1.0))
    sites = set(cache.sites())
    assert sites == set(explore.sites(pipe))
    assert any(x.endswith(".img") for x in sites) and any(x.endswith(".txt") for x in sites)


def test_a_direction_from_another_family_is_refused(pipe, tiny_sd3, tiny_flux):
    other = tiny_flux if families.family(pipe).name != "flux" else tiny_sd3
    d = text_direction(other, "red", "blue", templates=["a {} circle"])
    with pytest.raises(DirectionMismatchError):
        d.check(pipe)


# every editing method, at the fewest steps that run its whole loop (the methods' own tests check their maths)
EDIT_METHODS = {"hsds": dict(steps=2), "dds": dict(steps=2), "sds": dict(steps=2), "text": {}, "image": dict(steps=2),
                "flowedit": dict(steps=4, n_max=3), "flowalign": dict(steps=4, n_max=3), "rf-inversion": dict(steps=4),
                "unieditflow": dict(steps=4), "fluxspace": dict(steps=4)}


@pytest.fixture(scope="module")
def edit_case():
    rng = np.random.default_rng(0)
    return (rng.random((TINY_RES, TINY_RES, 3)) * 255).astype(np.uint8)


def test_every_editing_method_runs_or_says_why_not(pipe, edit_case):
    fam = families.family(pipe)
    src = explore.encode(pipe, edit_case, PROMPT)
    d = text_direction(pipe, "red", "blue", templates=["a {} circle"])
    keep = [text_direction(pipe, "circle", "square", templates=["a red {}"])]
    for method, fast in EDIT_METHODS.items():
        if method in fam.unsupported_methods:
            with pytest.raises(UnsupportedModelError, match=f"{method} does not apply to {fam.name}"):
                explore.edit(pipe, src, d, 1.0, method, preserve=keep, seed=0, **fast)
            continue
        r = explore.edit(pipe, src, d, 1.0, method, preserve=keep, seed=0, **fast)
        assert r.image.size == (TINY_RES, TINY_RES), method
        assert np.isfinite(np.asarray(r.image, np.float32)).all(), method


def test_attention_maps_probes_steering_and_geometry_run(pipe, edit_case):
    from explore.interp.activations import collect
    from explore.interp.attention import attention_map
    from explore.interp.geometry import cosine_matrix, direction_matrix, pca
    from explore.interp.probe import probe_all
    from explore.interp.steering import steered_image

    amap = attention_map(pipe, (edit_case, PROMPT), "circle", t=0.5)
    grid = amap.mean()
    assert grid.shape == amap.grid and np.isfinite(grid).all() and grid.sum() > 0
    # probes: 8 items, two colours, mean-pooled activations of one image-stream site
    rng = np.random.default_rng(1)
    images = (rng.random((8, TINY_RES, TINY_RES, 3)) * 255).astype(np.uint8)
    colours = ["red", "blue"] * 4
    site = next(s for s in explore.sites(pipe) if s.endswith(".img"))
    data = collect(pipe, (images, [f"a {c} circle" for c in colours]), [site], [0.5], labels={"color": colours},
                   progress=False)
    res = probe_all(data, ["color"])
    assert 0.0 <= res.probe("color", site, 0.5).train_accuracy_ <= 1.0
    # steering: alpha 0 is the plain render; a large vector changes it
    src = explore.encode(pipe, edit_case, PROMPT)
    # a random vector (a constant one would vanish in the next LayerNorm's mean subtraction)
    vec = np.random.default_rng(2).standard_normal(data.get(site, 0.5).shape[-1]).astype(np.float32)
    same = np.asarray(steered_image(pipe, src, site, vec, 0.0))
    again = np.asarray(steered_image(pipe, src, site, np.zeros_like(vec), 5.0))
    moved = np.asarray(steered_image(pipe, src, site, vec, 50.0))
    assert (same == again).all() and (same != moved).any()
    # geometry: directions of this family as a matrix, their PCA and cosines
    ds = [text_direction(pipe, a, b, templates=["a {} circle"]) for a, b in (("red", "blue"), ("small", "large"),
                                                                            ("red", "green"))]
    X = direction_matrix(ds)
    X = X[0] if isinstance(X, tuple) else X
    coords, _ = pca(X, 2)
    assert coords.shape == (3, 2) and cosine_matrix(X).shape == (3, 3)



def test_patching_and_bypass_work_through_the_same_site_names(pipe):
    from explore.interp.patching import blocks, bypass, patch

    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(2, 1, *latent_shape(pipe, TINY_RES, TINY_RES), generator=g)
    c, p = encode_text(pipe, PROMPT)
    t = torch.tensor([0.6])
    va, cache_a = run_with_cache(pipe, lambda: velocity(pipe, za, t, c, p, guidance=1.0), branch="all")
    with patch(pipe, {s: cache_a for s in explore.sites(pipe)}, branch="all"):
        assert torch.equal(velocity(pipe, zb, t, c, p, guidance=1.0), va)  # run A, bit for bit
    names = blocks(pipe)
    with bypass(pipe, names[-1]):
        _, cache = run_with_cache(pipe, lambda: velocity(pipe, za, t, c, p, guidance=1.0), branch="all")
    last, before = names[-1], names[-2]
    assert torch.equal(cache[(f"{last}.img", 0.6)], cache[(f"{before}.img", 0.6)])
