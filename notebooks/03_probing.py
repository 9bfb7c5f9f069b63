# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · What the transformer knows: probes, attention, steering
#
# An MMDiT block has two streams: image tokens (`.img`) and text tokens (`.txt`), which meet in
# joint attention. Three ways to look inside:
#
# 1. **Linear probes** — can a linear classifier read a factor (colour, shape, …) from a site's
#    activations? Held-out accuracy per block, stream and noise level `t`, against chance.
# 2. **Attention maps** — where do the image patches look when they attend to a word?
# 3. **Activation steering** — add a probe's direction to a stream and see what changes, next to
#    the EIM edit of the same attribute.

# %% tags=["parameters"]
model = "shapes"
n = 192  # scenes to probe (rendered, captioned, labels exact)
seed = 0
timesteps = (0.25, 0.5, 0.75)  # noise levels t (flow sigma) at which activations are collected
steps = None  # optimisation steps of the EIM edits shown next to steering
grid_step = 0.25
method = "hsds"  # the EIM method shown next to steering

# %%
import random

import explore
from explore.interp.probe import collect, probe_all
from explore.shapes.world import sample_scene
from explore.views import pictures as pics
from explore.views import widgets as panels
from explore.views.plots import plot_accuracy
from explore.views.session import EditSession, strength_grid

pipe = explore.load_pipeline(model)
world = explore.worlds.world_of(pipe)
settings = {} if steps is None else {"steps": steps}
session = EditSession(pipe, strength_grid(2.0, grid_step), settings, seed=seed)
caption = world.captions(1, seed)[0]
print(explore.sites(pipe))

# %% [markdown]
# ## 1 · Linear probes
#
# `collect` renders `n` random scenes with full captions, encodes them, noises each latent to
# every `t` (`z_t = (1 − t) z + t ε`, one seeded `ε` per item), runs the model once per batch and
# `t`, and keeps each site's output averaged over tokens. `probe_all` fits one logistic-regression
# probe per (factor, site, t) on 75% of the items and scores it on the rest.
#
# What to look for: the text stream knows every factor the caption names from the first block
# (the words are there); the image stream has to *see* them, so its accuracy rises with depth and
# falls with `t` (more noise, less image). The dashed lines are chance (the majority class).

# %%
rng = random.Random(seed)
scenes = [sample_scene(rng) for _ in range(n)]
dataset = collect(pipe, scenes, timesteps=timesteps, seed=seed)
results = probe_all(dataset)
print(dataset)
pics.show(plot_accuracy(results))

# %%
for f in results.factors:
    site, t, acc = results.best(f)
    print(f"{f:11} best {acc:.2f} at {site}, t = {t:g}")

# %% [markdown]
# Choose factors and one `t` (or the best `t` per site):

# %%
panels.ProbePanel(results)

# %% [markdown]
# ## 2 · Attention maps
#
# In joint attention each image patch's query attends over all keys, image and text; the softmax
# row sums to 1. The map of a word is the attention mass each patch puts on that word's tokens,
# renormalised over patches for display. All layers and all `t` come from **one** batched model
# call per word, so the sliders only look maps up. Colour words should light up the object; the
# background word the rest; position words a region.

# %%
attention = panels.AttentionPanel(session, caption, seed=seed, timesteps=timesteps)
attention

# %%
attention.layer.value = attention.layer.options[-1]
print(attention.message)

# %% [markdown]
# ## 3 · Activation steering next to EIM
#
# A probe's class-mean direction (the mean activation of items with value `v`, minus the mean of
# the other values' means) is a direction in a stream's activation space. **Steering** adds
# `α · d` to every token at one site while the image is rendered from `t_render`. EIM instead edits
# the *inputs* (the joint latent) and leaves the network alone. `α` is in units of a typical
# activation's length at that site. Compare: does steering change only the factor, and how much
# must it push?

# %%
steering = panels.SteeringPanel(session, results, caption, dataset, seed=seed, method=method)
steering

# %%
steering.alpha.value = 4.0
print(steering.message)
