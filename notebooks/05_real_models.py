# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The tour on real models: SD3, SD3.5, FLUX.1
#
# Everything in notebooks 01–04 runs on any SD3 / SD3.5 / FLUX.1 pipeline through the same code
# path (`explore.load_pipeline` drives the stock diffusers pipelines). This notebook repeats the
# tour for a real model on a GPU kernel: generate a source from a prompt, build the direction
# for a word swap, edit it with every method, sweep the strength, and use the panel; then the
# attention map of the edited word.
#
# CI runs it against `tiny-sd3`, a tiny random SD3 built in code, so the code path is exercised
# on every commit — its images are noise, which is expected.
#
# ## Memory and speed
#
# No GPU was available to the sessions that built this toolkit, so it states no GPU timings of its
# own. `bash scripts/gpu_check.sh` measures them on your GPU (`python -m explore bench` for
# SD3-medium, SD3.5-large and FLUX.1-dev at 1024² in bf16 with random weights, a full FLUX edit,
# peak memory) and writes them as JSON; the README quotes them once measured.
#
# EIM in fp32 takes its Hessian columns by finite differences (forward passes only); in bf16 it
# takes them as exact JVPs (finite differences drown in bf16 rounding), which needs the math
# attention kernel: more memory per column. An HSDS step with `m` preserved directions is
# `5 + m` (+1 for the edit's own column) sequences in one batched call (SD3 with guidance). The
# text encoders are large too (T5-XXL ≈ 4.7 B parameters): `offload="model"` keeps each component
# on the GPU only while it runs (slower, much less memory), `offload="sequential"` moves layer by
# layer (slowest, least memory). Use `dtype="bfloat16"` on GPUs. Without a factor table HSDS
# preserves the prompt's other words (`preserve="auto"`).
# Gated models (SD3, FLUX.1-dev) need `hf auth login` and the licence accepted, once, online.

# %% tags=["parameters"]
model = "stabilityai/stable-diffusion-3-medium-diffusers"  # hub id or local folder (save_pretrained layout)
dtype = "bfloat16"  # "float32" on CPUs
device = "auto"  # "auto": cuda if available, else cpu
resolution = None  # image side in pixels; None = the model's native resolution
offload = None  # None, "model" or "sequential"
prompt = "a photo of a red car parked on a city street"
source_word = "red"  # the word of the prompt to change ...
target_word = "blue"  # ... into this one
templates = None  # None: photo-style templates; "prompt": only the prompt with the word swapped
seed = 0
steps = None  # optimisation steps per edit (None: each method's default)
grid_step = 0.5
peer_models = []  # more models (hub ids, folders, "tiny-flux", ...) to run the peer methods on as well

# %%
import torch

import explore
from explore.editing.api import edit
from explore.views import pictures as pics
from explore.views import plots
from explore.views import widgets as panels
from explore.views.session import EditSession, strength_grid

if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = explore.load_pipeline(model, device=device, dtype=getattr(torch, dtype), offload=offload)
s = explore.spec(pipe)
print(f"{s.model_id}: {s.family}, native {s.resolution}px, sampler {s.sampler}, device {device}, {dtype}")
if torch.cuda.is_available():
    print(f"GPU memory in use: {torch.cuda.memory_allocated() / 2**30:.1f} GiB")

# %% [markdown]
# ## Encode a generated source
#
# No image at hand: the model generates one from the prompt (seeded), and EIM encodes it back:
# `z` from the VAE, `c, p` from the pipeline's own `encode_prompt` (SD3: CLIP-L ‖ CLIP-G then
# T5 tokens; FLUX: T5 tokens and the CLIP pooled vector). To edit your own picture, pass it as
# `session.source(prompt, image=your_image)` with a prompt that describes it.

# %%
settings = {} if steps is None else {"steps": steps}
session = EditSession(pipe, strength_grid(2.0, grid_step), settings, seed=seed, templates=templates,
                         resolution=resolution)
src = session.source(prompt, seed, "generate")
print(explore.pipeline.latent.info(src.latent))
pics.show(src.image)

# %% [markdown]
# ## Direction and edit
#
# On a real model the direction `source_word → target_word` averages over photo-style templates
# (`"a photo of a {} object"`, …) or, with `templates="prompt"`, uses the source prompt with the
# word swapped. Without ShapesWorld's labels, HSDS preserves by default the prompt's other
# content words (`preserve="auto"`: the direction of removing each one); word pairs such as
# `[("car", "truck")]` can be added or used instead.

# %%
d = session.direction("attribute", source_word, target_word, prompt=prompt)
res = edit(pipe, src.latent, d, 1.0, "hsds", seed=seed, steps=steps)
print(f"hsds: {res.seconds:.1f} s, {res.evaluations} transformer sequences")
pics.show(res.grid())

# %%
pics.show(plots.plot_trace(res.trace, "HSDS, λ = 1"))

# %% [markdown]
# ## The peers on a real model
#
# FlowEdit, FlowAlign, RF-Inversion, UniEdit-Flow and FluxSpace take the same direction and run
# with their authors' published defaults for the model's family (SD3: FlowEdit T = 50, n_max = 33,
# CFG 3.5 / 13.5; FLUX: T = 28, n_max = 24, guidance 1.5 / 5.5; FlowAlign 33 steps, CFG 13.5,
# ζ 0.01; RF-Inversion 28 steps, γ 0.5, η 0.9 until 38 % of the steps; UniEdit-Flow 15 steps,
# α 0.6, ω 5, no CFG; FluxSpace 30 steps, λ_fine 3, λ_coarse 0.5, mask threshold 0.5, from step 3).
# Each prints its cost in transformer sequences; on a GPU the seconds follow the sequences.

# %%
def run_peers(p, latent, direction, label):
    edits = []
    for m in ["flowedit", "flowalign", "rf-inversion", "unieditflow", "fluxspace"]:
        r = edit(p, latent, direction, 1.0, m, seed=seed, **({"steps": max(4, steps)} if steps else {}))
        print(f"{label} {m:>13}: {r.seconds:.1f} s, {r.evaluations} transformer sequences")
        edits.append(r.image)
    pics.show(pics.image_strip([r.source_image] + edits))


run_peers(pipe, src.latent, d, s.model_id)
for other in peer_models:
    p2 = explore.load_pipeline(other, device=device, dtype=getattr(torch, dtype), offload=offload)
    s2 = EditSession(p2, strength_grid(2.0, grid_step), settings, seed=seed, templates=templates)
    src2 = s2.source(prompt, seed, "generate")
    run_peers(p2, src2.latent, s2.direction("attribute", source_word, target_word, prompt=prompt),
              explore.spec(p2).model_id)

# %% [markdown]
# ## Sweep and panel
#
# The sweep batches every strength into one call per step; on a GPU this is nearly free for
# small images (launch-bound) and compute-bound for 1024². The panel works as in the tour: type
# the word to change and its replacement; preserved pairs are written `red>blue, day>night`.

# %%
key = session.plan(src, "attribute", target_word, "hsds", source_value=source_word)
sw = session.sweep(key, progress=True)
pics.show(sw.strip())

# %%
panel = panels.EditPanel(session, [prompt], source_word=source_word, target=target_word, strength=1.0, seed=seed)
panel

# %% [markdown]
# ## Where the model looks
#
# The attention of image patches on the source word, per layer and noise level: on a trained
# model it outlines the object the word names (the basis of the masks the metric uses on real
# images).

# %%
panels.AttentionPanel(session, prompt, seed=seed, how="generate", words=[source_word])

# %%
if torch.cuda.is_available():
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
