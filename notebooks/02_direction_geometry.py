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
# # 02 · The geometry of editing directions
#
# A text direction `Δc, Δp` (notebook 01) is a vector. If the model has organised its condition
# space by attribute, then directions that change the *same* attribute (red→blue, green→cyan, …)
# should point roughly the same way, and directions of *different* attributes should be nearly
# orthogonal. This notebook builds a library with one direction per ordered value pair of every
# ShapesWorld factor and looks at it three ways:
#
# 1. **PCA and UMAP** maps, coloured by attribute — are the attributes separate clusters?
# 2. the **cosine matrix** of all pairs of directions;
# 3. a **consistency** score per attribute: mean cosine within the attribute minus mean cosine
#    to other attributes, with a bootstrap interval.
#
# Then a panel: select a direction and see the edit it makes.

# %% tags=["parameters"]
model = "shapes"
n_templates = 32  # caption pairs averaged per direction
attributes = None  # None: every factor; or a list such as ["color", "shape"]
seed = 0
steps = None  # optimisation steps of the edits the panel shows (None: the method's default)
grid_step = 0.25
method = "hsds"  # the edit the panel shows for the selected direction
use_umap = True  # False: PCA only (UMAP compiles numba code once; it is cached on disk afterwards)

# %%
import tempfile

import numpy as np

import explore
from explore.editing.directions import DirectionLibrary, text_direction
from explore.interp.geometry import consistency, cosine_matrix, direction_matrix
from explore.shapes.world import FACTORS
from explore.views import pictures as pics
from explore.views.plots import geometry_figure, plot_consistency, plot_cosine
from explore.views import widgets as panels
from explore.views.session import EditSession, strength_grid

pipe = explore.load_pipeline(model)
world = explore.worlds.world_of(pipe)

# %% [markdown]
# ## A library of directions
#
# For every factor and every ordered pair of its values, `text_direction` averages the embedding
# difference over `n_templates` caption pairs from the world's grammar. A `DirectionLibrary` is a
# folder of them (safetensors + JSON, with an index), so a library built once can be reloaded.
# Note that `a→b` is `−(b→a)` up to template noise: every direction has its mirror image.

# %%
folder = tempfile.mkdtemp(prefix="directions-")
lib = DirectionLibrary(folder, explore.spec(pipe).model_id)
for attribute in attributes or list(FACTORS):
    values = FACTORS[attribute]
    for a in values:
        for b in values:
            if a != b:
                lib.add(text_direction(pipe, a, b, attribute=attribute, n=n_templates, seed=seed))
directions = lib.load_all()
print(f"{len(directions)} directions in {folder}")
print({a: sum(d.attribute == a for d in directions) for a in dict.fromkeys(d.attribute for d in directions)})

# %% [markdown]
# ## PCA and UMAP
#
# `direction_matrix` stacks the directions into an `(n, d)` matrix (here the token part `Δc`,
# flattened). **PCA** is linear: its axes are the directions of largest variance, and the
# percentages say how much of the total they explain. **UMAP** is non-linear: it keeps each
# point's nearest neighbours (by cosine) close, so clusters show, but distances between clusters
# mean little. Both are seeded.

# %%
X, infos = direction_matrix(directions, kind="dc")
pics.show(geometry_figure(X, infos, seed=seed, use_umap=use_umap and len(X) >= 4))

# %% [markdown]
# Raw `Δc` rows differ a lot in length — the colour directions are the longest — so PCA of the raw
# rows is dominated by them and the other attributes sit near the origin. Normalising every
# direction to unit length (`normalize=True`; the panel below does it by default) shows
# orientations only:

# %%
Xu, _ = direction_matrix(directions, kind="dc", normalize=True)
pics.show(geometry_figure(Xu, infos, seed=seed, use_umap=False, title="unit-normalised Δc"))

# %% [markdown]
# The pooled part `Δp` lives in a smaller space; its map often separates attributes as well:

# %%
Xp, _ = direction_matrix(directions, kind="dp")
pics.show(geometry_figure(Xp, infos, seed=seed, use_umap=False, title="Δp"))

# %% [markdown]
# ## Cosine similarity
#
# `cosine_matrix` compares orientations only (a direction's length is its strength). Blocks along
# the diagonal are attributes whose directions agree; the mirror pairs `a→b` / `b→a` show as
# strongly negative entries.

# %%
C = cosine_matrix(X)
pics.show(plot_cosine(C, infos, title="cosine of Δc directions"))

# %% [markdown]
# ## Consistency per attribute
#
# `consistency` = (mean cosine between distinct directions of the attribute) − (mean cosine to the
# other attributes' directions): about 0 for random directions, higher when an attribute has a
# direction of its own. Because mirror pairs cancel, a *factor* whose values lie on a line (like
# size) can still score low — the score measures a shared direction, not separability. The
# whiskers are a 95% bootstrap interval over the attribute's directions.

# %%
cons = consistency(X, infos, n_boot=200, seed=seed)
for a, r in cons.items():
    print(f"{a:11} score {r['score']:+.3f}  within {r['within']:+.3f}  across {r['across']:+.3f}  "
          f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  n={r['n']}")
pics.show(plot_consistency(cons))

# %% [markdown]
# With *every* ordered pair the scores above are mostly structure: `b→a = −(a→b)`, so an
# attribute's directions sum to zero, its mean cosine to any other attribute is exactly 0, and its
# mean within-attribute cosine is negative. The question the model can actually answer is sharper:
# do all directions **into the same value** (`red→blue`, `green→blue`, …) agree? If the model
# encodes "blue" as a direction of its own, they share it and the within-group cosine is positive.

# %%
into = [f"{i.attribute}→{i.target}" for i in infos]
cons_into = consistency(X, into, n_boot=200, seed=seed)
for g, r in sorted(cons_into.items(), key=lambda kv: -np.nan_to_num(kv[1]["score"]))[:8]:
    print(f"{g:20} within {r['within']:+.3f}  across {r['across']:+.3f}  n={r['n']}")
pics.show(plot_consistency(cons_into, title="consistency of directions into the same value"))

# %% [markdown]
# Look at the positions: `left→center` and `right→center` point in *opposite* directions (a
# negative score), while `→left` and `→right` agree. Position is laid out along a line in the
# condition space — moving to the middle depends on where you start.

# %% [markdown]
# ## Select a direction, see its edit
#
# Pick a direction in the dropdown: it is ringed on the map, and a render of the base scene with
# the direction's *source* value is edited along it (with the chosen method and strength). The
# edits go through the same cached session as the tour.

# %%
settings = {} if steps is None else {"steps": steps}
session = EditSession(pipe, strength_grid(2.0, grid_step), settings, seed=seed, n_templates=n_templates)
projections = ("pca", "umap") if use_umap else ("pca",)
panel = panels.GeometryPanel(session, directions, world.captions(1, seed)[0], seed=seed, method=method,
                         projections=projections)
panel

# %%
panel.direction.value = directions[len(directions) // 2].name
print(panel.message)
assert np.isfinite(X).all()
