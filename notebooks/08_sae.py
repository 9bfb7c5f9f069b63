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
# # 08 · Sparse-autoencoder features, scored against the truth
#
# A sparse autoencoder (SAE) rewrites each image token's activation at one site as a sparse sum of
# learned directions, its **features**. The field reads them by looking at the images where a
# feature fires most; here every render comes with its exact factors, so "this feature is red"
# is a number (an AUROC against the labels), not an impression.
#
# 1. **Train** a TopK SAE on the image tokens after block 2 (SAELens does the training; `explore`
#    collects the activations and feeds them in).
# 2. **Score** it on renders it never saw: variance explained, dead and dense features, the best
#    single feature per factor value, how many features are monosemantic against the truth, MIG /
#    DCI / SAP beside the raw activations, and whether the renders survive the SAE in the model's path.
# 3. **Browse** the features: top-activating patches, the ground-truth match, the map, steering.
# 4. **Steer**: edit with the features (the source value's feature swapped for the target's) on the
#    same benchmark as every other method, and how far that moves the activations off what the SAE knows.
#
# The command line does the same at full size: `python -m explore sae train|score|steer`.

# %% tags=["parameters"]
site = "transformer_blocks.2.img"
n_train = 512  # training renders (seed 1000, the development seed)
steps = 1500  # SAE training steps of 512 tokens
expansion, k = 8, 32
score_n = 256  # fresh renders (seed 1) the features are scored on
render_n = 8  # renders regenerated with the SAE in the site
browse_n = 96  # renders the browser searches for top patches
bench_n = 24  # benchmark items for steering vs HSDS vs the text direction
table_n = 256  # renders (training seed) the steering's feature table is chosen on
dci = "gbt"  # DCI's classifier (disentanglement_lib's); "logistic" is faster
folder = "../runs/notebook_sae"  # where the SAE and its scores are kept (None: a temporary folder)

# %%
import json
import tempfile
from pathlib import Path

from IPython.display import Markdown, display

import explore
from explore.interp.sae import SAESettings, token_activations, train_sae
from explore.interp.sae_study import sae_score, sae_score_markdown
from explore.views import pictures as pics
from explore.views.sae_panels import FeaturePanel
from explore.views.sae_plots import sae_score_figure

pipe = explore.load_pipeline("shapes")
folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="explore-sae-"))

# %% [markdown]
# ## 1 · Train
#
# `token_activations` runs the model once per render at `t = 0.5` and keeps every image token of the
# site: `renders x 64` rows of 128 numbers. `train_sae` hands them to SAELens' trainer in fixed-size
# batches (the order depends on the seed only, so a resumed run matches an uninterrupted one) and
# saves the SAE with its config next to the weights. A folder that already holds this SAE is loaded.

# %%
settings = SAESettings(site=site, n=n_train, steps=steps, expansion=expansion, k=k, seed=1000)
acts = token_activations(pipe, n_train, 1000, site)
sae = train_sae(acts, settings, folder, world="shapes")
curve = sae.explore["curve"]
print(f"{acts.x.shape[0]} token rows of {acts.x.shape[1]} numbers; {sae.cfg.d_sae} features, k = {sae.cfg.k}; "
      f"loss {curve[0][1]:.4g} -> {curve[-1][1]:.4g} over {curve[-1][0]} steps")

# %% [markdown]
# ## 2 · Score against the truth
#
# On `score_n` renders of another seed. The best feature per factor value is chosen on half of them
# and measured on the other half; a feature is **monosemantic** when it detects one factor value
# (AUROC ≥ 0.9) and no value of any other factor (all below 0.75). The last line of the table puts
# the SAE *into* the model: every step of a render goes through it at the site — do the world's
# readers still read every factor?

# %%
res = sae_score(pipe, folder, n=score_n, seed=1, render_n=render_n, dci_model=dci, out=folder / "score_seed1")
display(Markdown(sae_score_markdown(res)))
pics.show(sae_score_figure(res))

# %% [markdown]
# ## 3 · Browse the features
#
# Pick a feature (best ground-truth match first): its top-activating patches across the renders,
# what it detects (AUROC per factor value), its map on a render, and the render regenerated with the
# feature's decoder direction added at the site (α times its usual activation; 0 is the plain render).

# %%
browser = FeaturePanel(pipe, folder, n=browse_n, seed=1)
browser

# %% [markdown]
# ## 4 · Steering with the features, on the benchmark
#
# `method="sae"` edits `attribute: v- -> v+` by taking the features of `v-` out of every token where
# they fire and putting the features of `v+` in, at every render step (features chosen on the
# training seed). With `features=1, scale=1` this is the one-feature clamp of the SAE-steering papers;
# the defaults (32 features per value, scale 12, from t = 0.9) were chosen on seed 1000, where the
# clamp edited nothing. Beside it, HSDS and the text direction on the same items. The SAE's own
# reconstruction error of the site's activations, plain vs steered, says how far the steering pushes
# them off the distribution it was trained on (docs/results/sae.md has both worlds at n = 200).

# %%
from explore.editing.api import edit_batch
from explore.evaluation.items import shapes_benchmark
from explore.evaluation.runner import evaluate, item_direction

items = shapes_benchmark(bench_n, seed=1)
bench = evaluate(pipe, items, folder / "steer_seed1", ["sae", "hsds", "text"], curve_n=0, seed=1,
                 settings={"sae": {"folder": str(folder), "table_n": table_n}}, figures=False)
display(Markdown(Path(folder / "steer_seed1" / "results.md").read_text().split("\n\n")[1]))
lats = [explore.encode(pipe, it.load_image(), it.prompt) for it in items[:8]]
o = edit_batch(pipe, lats, [item_direction(pipe, it) for it in items[:8]], [1.0] * len(lats), "sae",
               seeds=[it.seed for it in items[:8]], folder=str(folder), table_n=table_n)
before, after = o["trace"]["sae_error_before"][0], o["trace"]["sae_error_after"][0]
print(f"the SAE's relative reconstruction error at {site}: {sum(before) / len(before):.3f} plain, "
      f"{sum(after) / len(after):.3f} steered")
print(json.dumps({m: round(r["overall"]["success"], 2) for m, r in bench["methods"].items()}))
