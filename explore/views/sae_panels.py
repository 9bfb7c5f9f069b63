"""The SAE feature browser (`FeaturePanel`): per feature, where it fires, what it matches, what it does.

For a trained SAE (`explore.interp.sae.train_sae`) on an embedded world: the feature's top-activating
patches across ``n`` renders (each a crop of the render around the token where the feature is
largest), its ground-truth match (AUROC of its largest activation over a render's tokens, per
factor value — the exact labels, not a reading of the crops), its map on a chosen render (the
token activations over the image), and steering: the render regenerated from ``t_render`` with
``α · mean activation · d_f`` added to every token at the SAE's site (α = 0: the plain render).
An SAE on a text-stream site (``*.txt``) has no patches: its top renders are shown whole and its
map is the caption's tokens, each shaded by the feature's activation on it.
"""

from __future__ import annotations

import html
import time

import ipywidgets as W
import numpy as np
import torch

from ..interp.sae import encode_rows, load_sae, token_activations
from ..interp.steering import steered_image
from ..pipeline.latent import encode
from ..pipeline.spec import spec
from ..stats import auroc_columns
from ..worlds import require_world
from .panel_base import Panel, image_widget, titled
from .pictures import DISPLAY_SIZE, attention_overlay, image_strip, png_bytes, raw_png


class FeaturePanel(Panel):
    """Browse an SAE's features (module docstring). Widgets: ``feature`` (the live features, best match
    first), ``scene`` (the render the map and steering use), ``alpha`` (steering strength); images
    ``top_image``, ``map_image``, ``steer_image``; ``match`` the feature's factor values by AUROC."""

    def __init__(self, pipe, folder, n: int = 96, seed: int = 1, *, t_render: float = 0.6, top: int = 8,
                 display_size: int = DISPLAY_SIZE):
        self.pipe = pipe
        self.world = require_world(pipe, "FeaturePanel browses an SAE against an embedded world's factors")
        self.sae = load_sae(folder)
        rec = self.sae.explore["settings"]
        self.site, self.t_render, self.top, self.display_size = rec["site"], t_render, int(top), display_size
        self._init_status()
        self.acts = token_activations(pipe, n, seed, self.site, rec["timesteps"], progress=False)
        self.Z = encode_rows(self.sae, self.acts.x).detach().numpy()
        self.rmax = self.acts.per_render_max(self.Z)
        fires = self.Z > 0
        self.mean_active = (self.Z * fires).sum(0) / np.maximum(1, fires.sum(0))
        self.text = self.acts.grid is None
        self.matches = self._matches()
        live = [int(j) for j in np.flatnonzero(fires.any(0))]
        live.sort(key=lambda j: -self.matches[j][0][2] if self.matches[j] else 0)
        self._renders: dict[int, np.ndarray] = {}
        self.feature = W.Dropdown(options=[(self._label(j), j) for j in live], description="feature")
        self.scene = W.BoundedIntText(value=0, min=0, max=n - 1, description="render")
        self.alpha = W.FloatSlider(value=0.0, min=-4.0, max=4.0, step=0.5, description="steer α",
                                   continuous_update=False)
        self.match = W.HTML()
        self.tokens = W.HTML()
        self.top_image = image_widget("explore-sae-top")
        self.map_image = image_widget("explore-sae-map", display_size)
        self.steer_image = image_widget("explore-sae-steer", display_size)
        for w, level in ((self.feature, "feature"), (self.scene, "scene"), (self.alpha, "steer")):
            self._observe(w, level)
        self.widget = W.VBox([
            W.HBox([self.feature, self.scene, self.alpha]), self.status, self.match,
            titled(f"top-activating {'renders' if self.text else 'patches'} ({n} renders of seed {seed})",
                   self.top_image),
            *([self.tokens] if self.text else []),
            W.HBox([titled("the render (its map: the caption's tokens above)" if self.text
                           else "its map on the render", self.map_image),
                    titled(f"steered at {self.site}", self.steer_image)]),
        ])
        self.widget.add_class("explore-sae-panel")
        self.feature.add_class("explore-sae-feature")
        self.alpha.add_class("explore-sae-alpha")
        self.refresh("all")

    def _matches(self) -> dict[int, list[tuple[str, str, float]]]:
        """Per feature, the factor values its render-level activation detects best (AUROC, top 3)."""
        rows = []
        for f, col in self.acts.labels.items():
            has = col != ""
            for v in sorted({x for x in col if x != ""}):
                rows.append((f, v, auroc_columns(self.rmax[has], (col == v)[has])))
        out = {}
        for j in range(self.Z.shape[1]):
            scored = sorted(((f, v, float(a[j])) for f, v, a in rows if np.isfinite(a[j])), key=lambda r: -r[2])
            out[j] = scored[:3]
        return out

    def _label(self, j: int) -> str:
        m = self.matches[j]
        return f"f{j} · {m[0][0]}={m[0][1]} ({m[0][2]:.2f})" if m else f"f{j}"

    def render_image(self, i: int) -> np.ndarray:
        if i not in self._renders:
            self._renders[i] = self.world.render(self.acts.scenes[i], spec(self.pipe).resolution)
        return self._renders[i]

    def top_patches(self, j: int) -> list[np.ndarray]:
        """Crops (3 x 3 tokens) around the token where feature ``j`` is largest, in its top renders (a
        text-stream SAE: the top renders whole)."""
        g = self.acts.grid
        order = np.argsort(-self.rmax[:, j])[: self.top]
        if g is None:
            return [self.render_image(int(i)) for i in order]
        cell = spec(self.pipe).resolution // g
        crops = []
        for i in order:
            rows = np.flatnonzero(self.acts.render == i)
            tok = int(self.acts.token[rows[np.argmax(self.Z[rows, j])]])
            r, c = divmod(tok, g)
            r0, c0 = max(0, min(g - 3, r - 1)) * cell, max(0, min(g - 3, c - 1)) * cell
            crops.append(self.render_image(int(i))[r0:r0 + 3 * cell, c0:c0 + 3 * cell])
        return crops

    def feature_map(self, j: int, i: int) -> np.ndarray:
        """``(grid, grid)``: feature ``j`` on render ``i``'s tokens (the mean over the noise levels); a
        text-stream SAE: ``(tokens,)``, one value per position of the text sequence."""
        g = self.acts.grid
        rows = np.flatnonzero(self.acts.render == i)
        size = int(self.acts.token.max()) + 1 if g is None else g * g
        m = np.zeros(size)
        np.add.at(m, self.acts.token[rows], self.Z[rows, j])
        m /= max(1, len(rows) // size)
        return m if g is None else m.reshape(g, g)

    def caption_tokens(self, i: int, size: int) -> list[str]:
        """The text tokens of render ``i``'s caption, position by position (the world pipeline's tokenizer;
        ``#k`` where it cannot say)."""
        names = [f"#{k}" for k in range(size)]
        tok = getattr(self.pipe, "tokenizer", None)
        if tok is not None:
            ids = tok(self.world.caption(self.acts.scenes[i], template=0), padding="max_length", max_length=size,
                      truncation=True).input_ids
            names[:len(ids)] = tok.convert_ids_to_tokens(ids)[:size]
        return names

    def token_html(self, values: np.ndarray, i: int) -> str:
        """The caption's tokens shaded by ``values`` (one per position; padding left out)."""
        top = max(float(values.max()), 1e-12)
        cells = []
        for name, v in zip(self.caption_tokens(i, len(values)), values):
            if name in ("<pad>", "<|endoftext|>") and v <= 0:
                continue
            a = max(0.0, float(v)) / top
            cells.append(f"<span title='{float(v):.3g}' style='background: rgba(230,75,53,{a:.2f}); padding: 1px 3px; "
                         f"margin: 1px; border-radius: 3px'>{html.escape(name)}</span>")
        return "<div class='explore-sae-tokens'>" + "".join(cells) + "</div>"

    def steered(self, j: int, i: int, alpha: float):
        sc = self.acts.scenes[i]
        lat = encode(self.pipe, self.render_image(i), self.world.caption(sc, template=0))
        vec = torch.as_tensor(self.sae.W_dec[j].detach().numpy() * float(self.mean_active[j]))
        return steered_image(self.pipe, lat, self.site, vec, alpha, t_render=self.t_render, seed=i)

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        j, i, alpha = self.feature.value, int(self.scene.value), float(self.alpha.value)
        if j is None:
            self._say("this SAE has no live feature on these renders")
            return
        if level in ("feature", "all"):
            self.match.value = "ground truth: " + " · ".join(f"{f} = {v}: AUROC {a:.2f}"
                                                             for f, v, a in self.matches[j])
            self.top_image.value = raw_png(image_strip(self.top_patches(j), size=96))
        if level in ("feature", "scene", "all"):
            m = self.feature_map(j, i)
            if self.text:
                self.tokens.value = self.token_html(m, i)
                self.map_image.value = png_bytes(self.render_image(i), self.display_size)
            else:
                self.map_image.value = png_bytes(attention_overlay(self.render_image(i), m, self.display_size),
                                                 self.display_size)
        self.steer_image.value = png_bytes(self.steered(j, i, alpha), self.display_size)
        self._say(f"f{j} on render {i}, α {alpha:+.1f} · {time.perf_counter() - t0:.2f} s")


__all__ = ["FeaturePanel"]
