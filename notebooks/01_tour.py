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
# # 01 · A tour of EIM editing
#
# **Encode → Identify → Manipulate** (EIM) edits one attribute of an image with a diffusion
# transformer and leaves the rest alone. This notebook walks through each step on **ShapesWorld**,
# a small SD3-architecture model shipped inside `explore` (64×64 pixels, one object on a plain
# background, every factor known exactly), then hands you an interactive panel.
#
# You will see: the *joint latent* of an image and its caption; a *text direction* `Δc, Δp`;
# the score-distillation update that moves the image latent (SDS, DDS and HSDS — the restoring
# term and the Hessian projection); the render; a batched *sweep* over strengths; and the panel,
# where moving the strength slider is a cache lookup.
#
# The first cell holds the parameters (CI runs this notebook with small values).

# %% tags=["parameters"]
model = "shapes"  # the embedded ShapesWorld model (a folder or hub id works too: see 05_real_models)
n = 8  # how many source captions the panel offers
seed = 0  # scene jitter, generation noise and the edit's own noise
steps = None  # optimisation steps per edit; None = each method's default (hsds: 20; hsds-legacy: 40)
grid_max = 2.0  # the strength slider and the batched sweep use 0, grid_step, ..., grid_max
grid_step = 0.25
measure = False  # True: run the latency benchmark at the end (takes a minute)

# %%
import explore
from explore.editing.api import edit
from explore.editing.methods import METHODS
from explore.evaluation.perf import measure_latency
from explore.views import pictures as pics
from explore.views import plots
from explore.views import widgets as panels
from explore.views.session import EditSession, strength_grid

pipe = explore.load_pipeline(model)
world = explore.worlds.world_of(pipe)
s = explore.spec(pipe)
settings = {} if steps is None else {"steps": steps}
session = EditSession(pipe, strength_grid(grid_max, grid_step), settings, seed=seed)
print(f"{s.model_id}: {s.family}, {s.resolution}x{s.resolution} px, sampler {s.sampler}")

# %% [markdown]
# ## 1 · Encode: the joint latent
#
# In an MMDiT (SD3, FLUX) the image and the prompt meet in **one sequence**. `explore` calls
# that state a `JointLatent` with three parts:
#
# | part | what it is | ShapesWorld |
# |---|---|---|
# | `z` | the image latent: the VAE mean, shifted and scaled as the pipeline does | a few channels at ¼ of the image side |
# | `c` | token embeddings of the prompt (from the pipeline's own `encode_prompt`) | one row per token (CLIP-L ‖ CLIP-G) |
# | `p` | the pooled prompt embedding | one vector (CLIP-L ‖ CLIP-G pooled) |
#
# Editing can move any of the three. A source is a caption plus an image: here the world renders
# the scene the caption describes (factors the caption leaves out, and the small jitter, come from
# `seed`), so its labels are exact.

# %%
captions = world.captions(n, seed)
src = session.source(captions[0], seed)
print(src.prompt)
print("labels:", src.labels)
print(explore.pipeline.latent.info(src.latent))
pics.show(src.image)

# %%
pics.show(plots.plot_joint_latent(src.latent))

# %% [markdown]
# ## 2 · Identify: a text direction
#
# To change a factor from `v-` to `v+` (say *red → blue*), encode many captions that differ only
# in that word and average the differences:
#
# $$\Delta c = \operatorname{mean}_T\,[E_c(T(v^+)) - E_c(T(v^-))], \qquad \Delta p \text{ likewise.}$$
#
# On ShapesWorld the templates `T` come from the world's own caption grammar (several word orders,
# random other factors), so what the pairs share cancels and only the attribute change remains.
# The edited condition is `c' = c + λΔc`, `p' = p + λΔp`, with λ the **strength**.

# %%
attribute = "color"
target = next(v for v in world.values(attribute) if v != src.labels[attribute])
d = session.direction(attribute, src.labels[attribute], target)
print(d.name, d.norms())
for a, b in d.templates[:3]:
    print(f"  {a!r:60} -> {b!r}")

# %% [markdown]
# ## 3 · Manipulate: moving the image latent
#
# Changing `c, p` alone (the **text** method) re-renders the image with the new caption: quick,
# but the rest of the image may drift. The other methods also move `z` by *score distillation*:
# each step draws a noise level `t` and one noise `ε`, noises the current latent
# (`z_t = (1-t) z + t ε`) and the source latent (`ẑ_t = (1-t) z0 + t ε`) and asks the model for
# velocities `v̂`:
#
# * `g_edit = v̂(z_t; c', p') − v̂(z_t; c, p)` — what the caption change asks for;
# * `g_rec = v̂(z_t; c, p) − v̂(ẑ_t; c, p) + (z − z0)` — the **restoring term**, a pull back to
#   the source (DDS in ε-space; the `+ (z − z0)` keeps the pull pointing home at low `t`).
#
# **SDS** follows only the target; **DDS** uses `g_edit + g_rec`; **HSDS** first removes from
# `g_edit` whatever looks like changing a *preserved* factor: with `h_j`, the finite-difference
# derivative of the model's prediction along each preserved direction `Δc_j` (a Hessian-vector
# product), and `Q` an orthonormal basis of them, `g = (g_edit − Q Qᵀ g_edit) + g_rec`. Only
# `g_edit` is projected: projecting `g_rec` would delete the very pull that keeps those factors.
# The **image** method is HSDS's `z'` rendered with the *source* caption.
#
# Finally the edited latent is *rendered*: re-noised to `t_render` and sampled down with `c', p'`.
# The reconstruction `x_rec` is the same procedure at λ = 0 with the same render noise, so any
# difference between `x_rec` and `x_edit` is the edit's doing.

# %%
res = edit(pipe, src.latent, d, 1.0, "hsds", labels=src.labels, seed=seed, steps=steps)
print(f"{res.method}: {res.seconds:.1f} s, {res.evaluations} transformer sequences; settings {res.settings}")
pics.show(res.grid())

# %% [markdown]
# The per-step trace shows the update norms, how far `z` has moved from `z0`, and the share of
# `g_edit` that HSDS removed because it would have changed a preserved factor.

# %%
pics.show(plots.plot_trace(res.trace, "HSDS, λ = 1"))

# %% [markdown]
# ### The peers: editing by sampling
#
# Five methods people use to edit with SD3 and FLUX take the same direction (their target
# condition is the same `c', p'`), but sample instead of optimising:
#
# * **FlowEdit** (Kulikov et al.) needs no inversion: from `z = z0`, each step draws `ε`, noises the
#   source `z_s = (1−s) z0 + s ε`, carries the same noise to the edit `z_t = z + z_s − z0`, and steps
#   `z` along `v̂(z_t; c') − v̂(z_s; c)`. At `c' = c` it never moves.
# * **FlowAlign** (Kim et al., ICLR 2026) is FlowEdit's loop plus a source-consistency term: each
#   step also pulls the edit's clean-image prediction toward the source's (weight ζ).
# * **UniEdit-Flow** (Jiao et al., ICLR 2026) inverts part of the way with a predictor-corrector
#   (one evaluation per step), then descends with the source and target velocities blended inside
#   a mask made from their difference, plus an ω-weighted push along that difference.
# * **RF-Inversion** (Rout et al.) runs the flow ODE up from the source toward one noise draw
#   (controller γ), then down again with the target condition, pulled toward the source for the
#   first steps (controller η).
# * **FluxSpace** (Dalva et al.) regenerates the inverted source with its own caption and, in every
#   joint block, adds to each image token's attention output the part of the edit condition's
#   output that the source condition's output does not already have.
#
# Every result says what it cost: `evaluations` counts transformer sequences (one latent through
# the transformer once), the figure that decides whether a method is usable interactively.

# %%
for m in ["flowedit", "flowalign", "rf-inversion", "unieditflow", "fluxspace"]:
    r = edit(pipe, src.latent, d, 1.0, m, labels=src.labels, seed=seed, **settings)
    print(f"{m:>13}: {r.seconds:.1f} s, {r.evaluations} transformer sequences")

# %% [markdown]
# Every method at λ = 1 (source, then text, image, sds, dds, hsds, flowedit, flowalign,
# rf-inversion, unieditflow, fluxspace). The session caches each one.

# %%
frames = [session.frame(session.plan(src, attribute, target, m), 1.0) for m in METHODS]
pics.show(pics.image_strip([src.image] + [f.image for f in frames]))

# %% [markdown]
# ## 4 · A sweep: every strength in one batch
#
# A sweep edits the same source at every strength of the grid **in one batched run**, with the
# same noise, so the strip differs only by λ. By default it follows the paper's
# Encode-**Identify**-Manipulate literally: HSDS runs once at λ = 1 and *identifies* the edit as a
# direction of the joint latent (`Δz` with `Δc, Δp`); every strength is then `z0 + λΔz` with
# `c + λΔc`, rendered — one render per strength, no optimisation (`mode="optimise"` runs one
# optimisation per strength; the README compares the two along the strength curve). The session
# caches it: afterwards the panel's slider only looks images up.

# %%
key = session.plan(src, attribute, target, "hsds")
sw = session.sweep(key, progress=True)
print(f"{len(sw.strengths)} strengths in {sw.seconds:.1f} s ({sw.evaluations} sequences)")
pics.show(sw.strip())

# %% [markdown]
# ## 5 · The panel
#
# Pick a caption (or type your own from the world's words) and a seed; choose the attribute, its
# target value, the method and which factors HSDS should preserve; move the strength. Moving the
# slider to a strength the sweep covers redraws from the cache; anything else renders the
# identified edit at that strength (one render, a fraction of a second on a CPU) and caches it. **sweep all strengths** computes the whole strip in one
# batch. The status line says what happened — or, for a wrong input, what to change.

# %%
panel = panels.EditPanel(session, captions, attribute=attribute, target=target, strength=1.0, seed=seed)
panel

# %% [markdown]
# The panel can be driven from code too (this is how the tests use it):

# %%
panel.set(strength=grid_max)
print(panel.message)

# %% [markdown]
# ## 6 · When an input is wrong
#
# Mistakes give a one-line message that says what to change, in the panel's status line or as an
# `explore.ExploreError` from code:

# %%
import numpy as np

bad_inputs = {
    "a caption with an unknown word": lambda: session.source("a small red dog"),
    "two values of one factor": lambda: session.source("a red blue circle"),
    "an empty caption": lambda: session.source("  "),
    "an unknown attribute": lambda: session.plan(src, "texture", "smooth"),
    "a target that is not a value": lambda: session.plan(src, "color", "large"),
    "the value the source has": lambda: session.plan(src, "color", src.labels["color"]),
    "an unknown method": lambda: session.plan(src, "color", target, "magic"),
    "a strength that is not a number": lambda: session.frame(key, float("nan")),
    "an infinite strength": lambda: session.frame(key, float("inf")),
    "an image whose size the model cannot take": lambda: session.source(src.prompt, image=np.zeros((50, 50, 3), "uint8")),
    "a two-channel image": lambda: session.source(src.prompt, image=np.zeros((64, 64, 2), "uint8")),
    "a float image outside [0, 1]": lambda: session.source(src.prompt, image=np.full((64, 64, 3), 3.0)),
    "an image file that does not exist": lambda: session.source(src.prompt, image="no/such/picture.png"),
    "an unknown factor to preserve": lambda: session.plan(src, "color", target, "hsds", preserve=["texture"]),
    "a negative seed": lambda: session.source(src.prompt, seed=-1),
}
for what, call in bad_inputs.items():
    try:
        call()
        raise AssertionError(f"{what} was accepted")
    except explore.ExploreError as e:
        print(f"{what}:\n    {e}")
        assert "\n" not in str(e), "every message is one line"

# %% [markdown]
# ## 7 · How interactive is it?
#
# `explore.evaluation.perf.measure_latency(pipe)` times a slider move with a cached sweep, a fresh HSDS
# edit and a full sweep in this panel (the README quotes its numbers for a 2-core CPU).

# %%
if measure:
    print(measure_latency(pipe, settings=settings))
