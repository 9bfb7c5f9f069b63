"""What HSDS preserves: the source's factor labels and the preserved text directions (DESIGN §2).

``preserve`` may mix factor keys of an embedded world (one direction from the source's value to
each other value of that factor), `Direction` objects, ``(v-, v+)`` word pairs (text directions
with the default templates) and ``"auto"``. ``None`` means: every factor of the source but the
edited one on an embedded world (it has a factor table); ``"auto"`` on every other model.

``"auto"`` needs no factor table and no training (`auto_directions`): for every other content word
of the source prompt, the direction of replacing it, in the prompt itself, by a neutral token
("remove the word"); ``"auto(k=2)"`` adds swaps for its ``k`` nearest whole-word neighbours in the
text encoder's own token-embedding table. Chosen by measurement on ShapesWorld with its factor table
hidden (development seed 1000, 36 edits, success / retention / sequences per edit): removal only
1.00 / 0.98 / 511; removal + 1 neighbour 1.00 / 0.98 / 745; removal + 2 neighbours 0.94 / 0.97 / 978;
2 neighbours only 0.94 / 0.98 / 745; the exact factor list 0.94 / 0.98 / 745; none (DDS) 0.97 / 0.99 /
187. (ShapesWorld's text encoders were trained from scratch on 34 words, so their token-embedding
neighbours are mostly not words of the same factor: red -> small, purple; left -> yellow, purple.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import torch

from ..errors import InputError
from ..pipeline.latent import JointLatent, decode, encode_text
from ..pipeline.spec import spec, state
from ..warn import warn
from ..worlds import world_of
from .directions import Direction, text_direction

PRESERVE_TEMPLATES = 16  # caption pairs per preserved direction (the edit's own direction uses 32)
# Words of a prompt that carry no factor of their own (the rest are "content words" for "auto").
STOPWORDS = frozenset("""a an the of at on in with and or to for by from into onto over under near next is are
this that its their his her as it photo picture image rendering close up""".split())
AUTO_NEIGHBOURS = 0  # nearest whole-word neighbours per content word (0: the removal direction only)


def source_labels(pipe, latent: JointLatent, image=None) -> dict[str, str] | None:
    """The factor values of a source, read from its pixels (embedded worlds); None for other models."""
    world = world_of(pipe)
    if world is None:
        return None
    img = image if image is not None else decode(pipe, latent.z[:1], output_type="np")[0]
    return {k: v for k, v in world.read(img).items() if v is not None}


def preserved_directions(pipe, direction: Direction, preserve, labels: dict[str, str] | None,
                         n: int = PRESERVE_TEMPLATES, prompt: str | None = None) -> list[Direction]:
    """Resolve ``preserve`` (see the module docstring) into a list of directions.

    ``prompt``: the source prompt (``"auto"`` builds its directions from it).
    """
    world = world_of(pipe)
    edited = set(direction.metadata.get("attributes", [direction.attribute]))
    if preserve is None:
        if world is None:
            preserve = "auto"
        else:
            known = labels if labels is not None else {}
            preserve = [k for k in world.keys(known or None) if k not in edited]
    if isinstance(preserve, (str, Direction)):
        preserve = [preserve]
    out: list[Direction] = []
    for item in preserve:
        if isinstance(item, str) and (item == "auto" or item.startswith("auto(")):
            if prompt is None:
                raise InputError("preserve='auto' builds its directions from the source prompt; the source has none")
            out += auto_directions(pipe, prompt, exclude=_edited_words(direction), **parse_auto(item))
        elif isinstance(item, Direction):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(text_direction(pipe, item[0], item[1]))
        elif isinstance(item, str):
            if world is None:
                raise InputError(
                    f"preserve={item!r}: attribute names work on ShapesWorld and the other embedded worlds; for this "
                    "model pass "
                    "Directions or (v-, v+) word pairs, e.g. preserve=[('red', 'blue')]"
                )
            if item not in world.keys():
                raise InputError(f"unknown attribute {item!r} to preserve; known: {', '.join(world.keys())}")
            if item in edited:
                raise InputError(f"cannot preserve {item!r}: it is the attribute being edited")
            if labels is None or item not in labels:
                raise InputError(f"the source's {item} is unknown; pass labels= or Directions to preserve")
            a = labels[item]
            out += [cached_direction(pipe, a, b, item, n) for b in world.values(item) if b != a]
        else:
            raise InputError(f"cannot preserve {item!r}: give attribute names, Directions or (v-, v+) pairs")
    return out


def cached_direction(pipe, a: str, b: str, attribute: str, n: int = PRESERVE_TEMPLATES) -> Direction:
    """The text direction ``a -> b`` of a world factor, cached on the pipeline (``state(pipe).directions``)."""
    cache = state(pipe).directions
    key = (attribute, a, b, n)
    if key not in cache:
        cache[key] = text_direction(pipe, a, b, attribute=attribute, n=n)
    return cache[key]


def parse_auto(text: str) -> dict:
    """``"auto"`` -> ``{}``; ``"auto(k=3,remove=0)"`` -> ``{"k": 3, "remove": False}`` (`auto_directions` options)."""
    m = re.fullmatch(r"auto(?:\((.*)\))?", text.strip())
    if not m:
        raise InputError(f"cannot read {text!r}: write 'auto' or e.g. 'auto(k=3,remove=0)'")
    out: dict = {}
    for part in filter(None, (p.strip() for p in (m.group(1) or "").split(","))):
        key, _, value = part.partition("=")
        if key not in ("k", "remove") or not value.strip().isdigit():
            raise InputError(f"cannot read {part!r} in {text!r}: options are k=<int> and remove=0|1")
        out[key] = int(value) if key == "k" else bool(int(value))
    return out


def _edited_words(direction: Direction) -> set[str]:
    """The value words an edit changes (composed edits: every part's)."""
    parts = direction.metadata.get("parts") or [{"source": direction.source, "target": direction.target}]
    return {w.lower() for p in parts for w in (p["source"], p["target"])}


def content_words(prompt: str, exclude=()) -> list[str]:
    """The prompt's words that may name a factor: alphabetic, not a stopword, not in ``exclude``, in order."""
    skip = STOPWORDS | {w.lower() for w in exclude}
    words = re.findall(r"[A-Za-z]+", prompt.lower())
    return list(dict.fromkeys(w for w in words if w not in skip and len(w) > 1))


def _vocabulary_words(pipe) -> tuple[list[str], torch.Tensor]:
    """Whole words of the first text encoder's vocabulary (one token each) and their input embeddings (cached)."""
    st = state(pipe)
    hit = st.directions.get(("_vocabulary",))
    if hit is not None:
        return hit
    tok = pipe.tokenizer
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float().cpu()
    specials = set(tok.all_special_tokens)
    vocab = tok.get_vocab()
    bpe = any(t.endswith("</w>") for t in vocab)  # CLIP's BPE marks the end of a word with </w>
    words, rows = [], []
    for token, i in vocab.items():
        if token in specials or i >= len(table) or (bpe and not token.endswith("</w>")):
            continue
        w = token[:-4] if bpe else token
        if w.isalpha() and len(w) > 1:
            words.append(w.lower())
            rows.append(i)
    emb = torch.nn.functional.normalize(table[rows], dim=1)
    st.directions[("_vocabulary",)] = (words, emb)
    return words, emb


def neighbours(pipe, word: str, k: int = AUTO_NEIGHBOURS, avoid=()) -> list[str]:
    """The ``k`` whole words whose input embeddings are nearest (cosine) to ``word``'s, ``avoid`` left out."""
    words, emb = _vocabulary_words(pipe)
    if word not in words:
        return []
    sims = emb @ emb[words.index(word)]
    out = []
    for j in sims.argsort(descending=True).tolist():
        w = words[j]
        if w != word and w not in avoid and w not in STOPWORDS:
            out.append(w)
        if len(out) == k:
            break
    return out


def neutral_token(pipe) -> str:
    """A token that names nothing: the tokenizer's unknown token when it is one token, else ``"thing"``."""
    unk = pipe.tokenizer.unk_token
    return unk if unk and len(pipe.tokenizer(unk, add_special_tokens=False).input_ids) == 1 else "thing"


def prompt_direction(pipe, negative: str, positive: str, attribute: str, source: str, target: str) -> Direction:
    """The direction between two prompts (one template pair): ``Δc = E_c(positive) - E_c(negative)``, ``Δp`` too."""
    c, p = encode_text(pipe, [negative, positive])
    return Direction(dc=(c[1] - c[0]).float(), dp=(p[1] - p[0]).float(), attribute=attribute, source=source,
                     target=target, model_id=spec(pipe).model_id, templates=[(negative, positive)],
                     metadata={"n_templates": 1, "auto": True})


def auto_directions(pipe, prompt: str, exclude=(), k: int = AUTO_NEIGHBOURS, remove: bool = True) -> list[Direction]:
    """Preserved directions from the prompt alone (no factor table, no training).

    For each content word ``w`` of ``prompt`` not in ``exclude`` (the edit's own words): the prompt
    with ``w`` swapped for each of its ``k`` nearest whole-word neighbours in the text encoder's
    token-embedding table, and (``remove``) with ``w`` replaced by a neutral token. Each is one
    template pair (the prompt itself), so token positions line up.
    """
    out = []
    words = content_words(prompt, exclude)
    neutral = neutral_token(pipe)
    pattern = lambda w: re.compile(rf"\b{re.escape(w)}\b", flags=re.IGNORECASE)  # noqa: E731
    for w in words:
        targets = neighbours(pipe, w, k, avoid=set(words) | set(exclude)) + ([neutral] if remove else [])
        for r in targets:
            out.append(prompt_direction(pipe, prompt, pattern(w).sub(r, prompt), f"auto:{w}", w, r))
    if not out:
        warn(f"preserve='auto' found no content word to preserve in {prompt!r}; HSDS is DDS here")
    return out


def span_share(targets, basis) -> list[float]:
    """For each target direction, the share of its norm inside the span of the ``basis`` directions
    (``‖P x‖ / ‖x‖`` over the concatenated ``(Δc, Δp)``): how much of an exact preserved direction
    the auto ones can represent."""
    flat = lambda d: torch.cat([d.dc.float().flatten(), d.dp.float().flatten()])  # noqa: E731
    if not basis:
        return [0.0 for _ in targets]
    B = torch.stack([flat(d) for d in basis])
    _, sv, vh = torch.linalg.svd(B, full_matrices=False)
    q = vh[sv > 1e-6 * sv.max()].T
    return [float((q.T @ flat(t)).norm() / flat(t).norm().clamp_min(1e-12)) for t in targets]


def reduce_basis(directions: Sequence[Direction], k: int) -> list[Direction]:
    """The first ``k`` principal directions of the preserved ``(Δc_j, Δp_j)`` (SVD of the stack).

    Each is scaled to the mean norm of the originals (so a finite difference of step ``δ`` along it
    is as large as along an original); the span of the first ``k`` is the best rank-``k``
    approximation of the originals' span. Fewer than ``k`` given: returned as they are.
    """
    if len(directions) <= k:
        return list(directions)
    d0 = directions[0]
    flat = torch.stack([torch.cat([d.dc.float().flatten(), d.dp.float().flatten()]) for d in directions])
    _, sv, vh = torch.linalg.svd(flat, full_matrices=False)
    scale = flat.norm(dim=1).mean()
    n_c = d0.dc.numel()
    out = []
    for j in range(k):
        v = vh[j] * scale
        out.append(dataclasses.replace(d0, dc=v[:n_c].view_as(d0.dc).to(d0.dc.dtype), dp=v[n_c:].view_as(d0.dp)
                                       .to(d0.dp.dtype), attribute=f"basis-{j}", source="", target="",
                                       templates=[], metadata={"basis": j, "singular_value": float(sv[j])}))
    return out
