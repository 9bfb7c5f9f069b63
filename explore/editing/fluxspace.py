"""FluxSpace-style editing in the joint attention outputs (Dalva et al., arXiv:2412.09611).

In every joint (dual-stream) block, for every image token, the attention output ``a`` of the
source stream gets ``λ_fine · m ⊙ (a_e - proj_{a_ref}(a_e))``: ``a_e`` is the image-token
attention output under the edit condition, ``a_ref`` under the reference condition, the projection
per token over the feature dimension (after the output projection), and ``m`` a binary mask from
the image queries' attention on the edited word's tokens in the edit stream (mean over heads,
min-max normalised per image, ``sigmoid(10 (s - 0.5)) >= threshold``). The coarse edit moves the
pooled embedding: ``p_src = (1 - w) p + w (p_e - proj_p(p_e))``. Both apply from step
``edit_start`` of the regeneration on. Real images (every source here) go through RF-Inversion
first (`explore.editing.peers.RFInversion.invert`) and are regenerated with its controlled reverse
ODE, as the reference does for real images.

The same `Direction` as every method: the edit condition is ``(c + λΔc, p + λΔp)`` and the
reference is the **source** condition ``(c, p)`` (the paper's reference is the empty prompt and its
edit prompt the attribute words alone; with the source as reference the projection keeps what
the edit changes relative to the source, and strength 0 is exactly the plain regeneration). The
coarse weight is ``w = min(1, |λ| λ_coarse)``. The reference and edit streams run as extra rows of
the step's one batched transformer call: before each joint block their image tokens are set to the
source row's (so their attention sees the source image, as in the reference, whose text streams
evolve on their own), and their outputs are only read. That costs 3 sequences per step where the
reference implementation adds two attention calls per block (about 1.5-2x one sequence); the cost
this module reports is the sequences it runs. Which rows are which lives in the hooks; a batch
split by `explore.pipeline.latent.split_on_oom` is refused (the rows of one item must share a call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import InputError, ResourceError
from ..interp.attention import word_token_indices
from ..pipeline.families import family
from ..pipeline.latent import count_sequences, velocity
from ..pipeline.sampling import image_tokens, schedule
from .loop import conditions
from .peers import PeerMethod, RFInversion
from .settings import FluxSpaceSettings


def project_away(a_e: torch.Tensor, a_ref: torch.Tensor) -> torch.Tensor:
    """``a_e - (<a_e, a_ref> / <a_ref, a_ref>) a_ref`` per token (last dim the features)."""
    coef = (a_e * a_ref).sum(-1, keepdim=True) / ((a_ref * a_ref).sum(-1, keepdim=True) + 1e-8)
    return a_e - coef * a_ref


def coarse_pooled(p: torch.Tensor, p_e: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(1 - w) p + w (p_e - proj_p(p_e))`` per row (``weight`` ``(B,)``)."""
    c = p_e - ((p_e * p).sum(-1, keepdim=True) / ((p * p).sum(-1, keepdim=True) + 1e-8)) * p
    w = weight.view(-1, 1)
    return (1 - w) * p + w * c


def binary_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(B, N)`` attention scores -> the reference's mask: min-max per row, ``sigmoid(10 (s - .5)) >= threshold``."""
    lo = scores.amin(1, keepdim=True)
    hi = scores.amax(1, keepdim=True)
    s = (scores - lo) / (hi - lo + 1e-8)
    return (torch.sigmoid(10 * (s - 0.5)) >= threshold).to(scores.dtype)


class _Layout:
    """Which rows of the running call are the source, reference and edit streams of each edited item."""

    def __init__(self, n_rows: int, src: list[int], ref: list[int], edit: list[int], tokens: list[list[int]],
                 fine: float, threshold: float):
        self.n_rows, self.src, self.ref, self.edit = n_rows, src, ref, edit
        self.tokens, self.fine, self.threshold = tokens, fine, threshold
        self.masks: list[torch.Tensor] = []  # the masks of the last call (per joint block), for inspection


def _rows(x: torch.Tensor, layout: _Layout) -> None:
    if x.shape[0] < layout.n_rows:
        raise ResourceError("fluxspace needs the rows of one step in one transformer call; this batch was split "
                            "for memory (lower the batch or the resolution)")


def _scores(attn, fam, hs: torch.Tensor, enc: torch.Tensor, rope, tokens: list[list[int]]) -> torch.Tensor:
    """Mean attention of each image query on the edit tokens (softmax over the text keys, mean over heads)."""
    q, k, d = fam.query_key(attn, hs, enc, rope)
    w = ((q.float() @ k.float().transpose(-1, -2)) * d**-0.5).softmax(-1).mean(1)  # (B, N_img, L_txt)
    return torch.stack([w[b][:, tok].mean(-1) for b, tok in enumerate(tokens)])


@contextlib.contextmanager
def fluxspace_hooks(pipe, layout: _Layout) -> Iterator[_Layout]:
    """Install the FluxSpace edit on every joint block of ``pipe.transformer`` for calls with ``layout``."""
    fam = family(pipe)
    handles = []

    def pre(module, args, kwargs):
        hs = kwargs["hidden_states"]
        _rows(hs, layout)
        hs = hs.clone()
        hs[layout.ref] = hs[layout.src]
        hs[layout.edit] = hs[layout.src]
        kwargs["hidden_states"] = hs
        return args, kwargs

    def post(module, args, kwargs, output):
        img = output[0]
        _rows(img, layout)
        a, a_ref, a_e = img[layout.src].float(), img[layout.ref].float(), img[layout.edit].float()
        scores = _scores(module, fam, kwargs["hidden_states"][layout.src],
                         kwargs["encoder_hidden_states"][layout.edit], kwargs.get("image_rotary_emb"), layout.tokens)
        m = binary_mask(scores, layout.threshold)
        layout.masks.append(m.detach().cpu())
        img = img.clone()
        img[layout.src] = (a + layout.fine * m.unsqueeze(-1) * project_away(a_e, a_ref)).to(img.dtype)
        return (img, *output[1:])

    try:
        for block in pipe.transformer.transformer_blocks:  # the joint blocks (FLUX's single blocks stay as they are)
            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.attn.register_forward_hook(post, with_kwargs=True))
        yield layout
    finally:
        for h in handles:
            h.remove()


def edit_tokens(pipe, item) -> list[int]:
    """The edited word's token positions in the source prompt; else the 2 tokens ``Δc`` changes most."""
    prompt = item.latent.prompt[0] if item.latent.prompt else None
    parts = item.direction.metadata.get("parts") or [{"source": item.direction.source}]
    if prompt:
        out: list[int] = []
        for part in parts:
            try:
                out += word_token_indices(pipe, prompt, part["source"])
            except InputError:
                continue
        if out:
            return sorted(set(out))
    norms = item.direction.dc.float().norm(dim=-1).flatten()
    return norms.topk(min(2, len(norms))).indices.sort().values.tolist()


class FluxSpace(PeerMethod):
    """FluxSpace-style attention-output editing after RF-Inversion (see the module docstring)."""

    name = "fluxspace"
    settings_class = FluxSpaceSettings

    @torch.no_grad()
    def run(self, pipe, items: Sequence, settings: FluxSpaceSettings, progress: bool = False):
        z0, c, p, c_e, p_e, same = conditions(items)
        Y, index, sequences = RFInversion().invert(pipe, items, settings)
        N = int(settings.steps)
        sig = schedule(pipe, N, image_tokens=image_tokens(pipe, z0.shape))
        start, stop = int(settings.start * N), min(int(settings.stop * N), N)
        eta, guidance = float(settings.eta), float(settings.target_guidance)
        fine, coarse = float(settings.fine), float(settings.coarse)
        act = [i for i in range(len(items)) if not same[i] and (fine != 0 or coarse != 0)]
        strengths = torch.tensor([abs(float(it.strength)) for it in items], device=z0.device)
        p_src = p.clone()
        if act and coarse != 0:
            p_src[act] = coarse_pooled(p[act], p_e[act], (strengths[act] * coarse).clamp(max=1.0))
        tokens = [edit_tokens(pipe, items[i]) for i in act]
        # rows: every item's source row, then per edited item a reference and an edit row
        n, k = len(items), len(act)
        ref_rows, edit_rows = list(range(n, n + k)), list(range(n + k, n + 2 * k))
        groups = list(range(n)) + act + act  # the three rows of an item share z_t, t: one unconditional row
        layout = _Layout(n + 2 * k, act, ref_rows, edit_rows, tokens, fine, float(settings.threshold))
        fam = family(pipe)
        X = Y[index].clone()
        trace: dict[str, list] = {"t": [], "grad_norm": [], "dz_norm": []}
        for i in tqdm(range(N), desc=self.name, disable=not progress, leave=False):
            s = sig[i]
            editing = bool(act) and i >= int(settings.edit_start)
            if editing:
                zz = torch.cat([X, X[act], X[act]])
                cc = torch.cat([c, c[act], c_e[act]])
                pp = torch.cat([p_src, p[act], p_e[act]])
                layout.masks = []
                with fluxspace_hooks(pipe, layout):
                    v = velocity(pipe, zz, s, cc, pp, guidance=guidance, uncond_groups=groups)[:n]
                sequences += count_sequences(n + 2 * k, guidance, fam, groups=n)
            else:
                v = velocity(pipe, X, s, c, p, guidance=guidance)
                sequences += count_sequences(n, guidance, fam)
            v = -v
            if start <= i < stop:
                v = v + eta * ((z0 - X) / s - v)
            X = X + v * (sig[i] - sig[i + 1])
            trace["t"].append([s] * n)
            trace["grad_norm"].append(v.flatten(1).norm(dim=1).tolist())
            trace["dz_norm"].append((X - z0).flatten(1).norm(dim=1).tolist())
        return X, trace, sequences
