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
# # 04 · Measuring disentanglement
#
# A good edit changes the asked-for attribute, changes nothing else, and starts from a faithful
# reconstruction. The **SDE** score puts the three into one number per edit:
#
# ```
# x_rec  = EIM(x, λ = 0)        x_edit = EIM(x, λ)        (same render noise)
# E      = s(x_edit) − s(x_rec)                              did the attribute become v+?
# M      = union of the object masks of x and x_edit         (background edits: its complement)
# leak   = ‖(x_edit − x_rec) ⊙ (1 − M)‖² / ‖x_edit − x_rec‖²  share of the change outside M
# R      = ‖x_rec − x‖² / ‖x − mean(x)‖²                     relative reconstruction error
# SDE    = max(E, 0) · (1 − leak) · (1 − min(R, 1))
# ```
#
# `s` is a scorer's probability that the factor equals `v+`; on ShapesWorld the exact readers
# (0/1). This notebook computes it step by step for one edit, then runs the benchmark for every
# method, and sets the ground-truth metrics **MIG**, **DCI** and **SAP** beside it.

# %% tags=["parameters"]
model = "shapes"
n = 36  # benchmark items (attributes in turn, value pairs sampled evenly)
seed = 0
steps = None  # optimisation steps per edit; None = each method's default
methods = None  # None: every method (the five EIM methods and the three peers); or a list
curve_n = 12  # items also measured at the other strengths (the curves)
curve_strengths = (0.5, 1.0, 1.5, 2.0)
results = None  # path of a results.json from `python -m explore evaluate` to show instead of running
features_n = 256  # scenes for MIG / DCI / SAP
grid_step = 0.25  # the metric panel's strength grid

# %%
import json
import tempfile
from pathlib import Path

import numpy as np
from IPython.display import Markdown

import explore
from explore.editing.api import edit
from explore.editing.methods import METHODS
from explore.evaluation.items import shapes_benchmark
from explore.evaluation.metrics import sde
from explore.evaluation.runner import evaluate, results_markdown
from explore.evaluation.scorers import get_scorer
from explore.views import pictures as pics
from explore.views import plots
from explore.views import widgets as panels
from explore.views.session import EditSession, strength_grid
from explore.views.plots import plot_curves, plot_pareto, plot_per_attribute

pipe = explore.load_pipeline(model)
scorer = get_scorer(pipe)

# %% [markdown]
# ## One edit, step by step
#
# A benchmark item is a clean render with its full caption, exact labels and exact object mask,
# and an edit `v- → v+` of one attribute. Take the first colour item.

# %%
items = shapes_benchmark(max(n, 6), seed)
item = next(it for it in items if it.attribute == "color")
print(item.prompt, "|", f"{item.attribute}: {item.source} → {item.target}")
pics.show(item.load_image())

# %% [markdown]
# **Step 1 — reconstruction and edit.** EIM at λ = 0 and at λ = 1, with the same render noise.

# %%
latent = explore.encode(pipe, item.load_image(), item.prompt)
d = explore.text_direction(pipe, item.source, item.target, attribute=item.attribute)
res = edit(pipe, latent, d, 1.0, "hsds", labels=item.labels, seed=item.seed, steps=steps)
x = item.load_image().astype(np.float32) / 255
x_rec = np.asarray(res.reconstruction, dtype=np.float32) / 255
x_edit = np.asarray(res.image, dtype=np.float32) / 255
pics.show(res.grid())

# %% [markdown]
# **Step 2 — the edit effect `E`.** The scorer reads both images; `E` is how much more the edit
# shows `v+` than the reconstruction does (not the source: a reconstruction that already drifted
# to `v+` earns the edit nothing).

# %%
p_edit, p_rec = scorer.prob([x_edit, x_rec], item.attribute, item.target)
print("readings of x_edit:", scorer.read([x_edit])[0])
print(f"s(x_edit) = {p_edit:.2f}, s(x_rec) = {p_rec:.2f}, E = {p_edit - p_rec:+.2f}")

# %% [markdown]
# **Step 3 — the mask and the leak.** Where may the edit change pixels? Inside the object as it
# was (the source's mask) and as it is now (the mask read from `x_edit`): their union `M`. The
# leak is the share of the squared change that falls outside `M`.
#
# **Step 4 — reconstruction error `R` and the score.**

# %%
mask = item.load_mask() | scorer.masks([x_edit])[0]
parts = sde(x, x_rec, x_edit, float(p_rec), float(p_edit), mask, item.attribute)
print(parts)
pics.show(plots.sde_figure(x, x_rec, x_edit, mask, parts, item.attribute))

# %% [markdown]
# **Try it.** The same four steps for any item, method and strength: pick them below and watch
# `E`, the leak, `R` and the score move (each edit is computed once, then cached).

# %%
session = EditSession(pipe, strength_grid(2.0, grid_step), {} if steps is None else {"steps": steps}, seed=seed)
panels.MetricPanel(session, items[:max(n, 6)], scorer)

# %% [markdown]
# ## The benchmark: every method
#
# `evaluate` runs each method on every item (items batched, each edit at λ = 1 next to its
# reconstruction at λ = 0), scores them, and measures the first `curve_n` items at the other
# strengths too. It writes `items.jsonl` as it goes (a killed run resumes), then `results.json`,
# a Markdown table and figures. Each method runs at its own default settings, reported in the
# JSON. With `results=` pointing at a saved `results.json` the notebook shows that instead.

# %%
if results is not None and Path(results).is_file():
    res_bench = json.loads(Path(results).read_text())
else:
    out = tempfile.mkdtemp(prefix="benchmark-")
    ms = list(methods or METHODS)
    per_method = {m: ({"steps": steps} if steps is not None else {}) for m in ms}
    res_bench = evaluate(pipe, items[:n], out, ms, curve_n=curve_n, curve_strengths=curve_strengths,
                         settings=per_method, seed=seed)
    print("written to", out)
Markdown(results_markdown(res_bench))

# %% [markdown]
# The curves: SDE, success and retention against strength. Too little strength fails to edit;
# too much drags other factors along (retention falls) or wrecks the image (SDE falls).

# %%
pics.show(plot_curves(res_bench))

# %%
pics.show(plot_per_attribute(res_bench))

# %% [markdown]
# Quality against cost: each method's success, retention and SDE against the transformer
# sequences it spends per edit (the edit and its reconstruction, log scale). The dashed line joins
# the methods that no other method beats on both; the README shows the full-size run.

# %%
pics.show(plot_pareto(res_bench))

# %% [markdown]
# ## MIG, DCI and SAP beside SDE
#
# SDE scores *edits*. The established disentanglement metrics score a *representation*: given
# features of many images and their true factors, is each factor captured by few features (MIG:
# the gap in mutual information between the best and second-best feature; SAP: the same with
# single-feature classifiers), and is each feature about few factors (DCI: disentanglement,
# completeness, informativeness from a tree ensemble's importances)? Here the features are the
# model's pooled activations at a few sites (`t = 0.5`) for renders given the **empty prompt** —
# so everything found came from the pixels — reduced to 10 principal components.
# `representation_study` scores them per site and per factor, then asks whether the factors the
# representation separates best are the ones each method edits best: Spearman's ρ between the
# per-factor score and the per-attribute SDE of the benchmark above (with six factors, only
# |ρ| ≥ 0.83 would be significant; the README reports the full-size run).

# %%
import random

from explore.interp.probe import collect
from explore.interp.studies import representation_markdown, representation_study
from explore.shapes.world import sample_scene

rng = random.Random(seed + 1)
scenes = [sample_scene(rng) for _ in range(features_n)]
blocks = len(pipe.transformer.transformer_blocks)
sites = [f"transformer_blocks.{i}.img" for i in sorted({0, blocks // 2, blocks - 1})]
feats = collect(pipe, scenes, prompts="", sites=sites, timesteps=(0.5,), seed=seed, progress=False)
rep = representation_study(feats, [res_bench], t=0.5, n_components=10)
Markdown(representation_markdown(rep))
