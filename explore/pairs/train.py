"""Train the ShapesWorld Pairs model: a resumable, curriculum-initialised SD3 trainer.

Curriculum: the model starts from the shipped one-object ShapesWorld model (its VAE is kept
frozen: both worlds have the same objects and pixels), so it already knows what one object with
a colour, size and position looks like; training on two-object scenes then has to learn
composition and **binding** (which attributes go with which noun). Capacity where binding
happens: ``extra_layers`` new joint blocks are inserted before the last block, each starting as
an exact identity (its adaptive-norm modulation is zero-initialised, so every gate is 0), and the
text encoders get position embeddings for the longer two-object captions and the new words.

Resumable: every ``ckpt_every`` steps ``ckpt.pt`` holds the live weights, the EMA, the optimiser,
the step and every random state, written atomically; `train` with the same ``out`` continues from
it bit-for-bit (same batches, same noise). Every ``eval_every`` steps the EMA model is exported as
a diffusers folder ``out/model`` (the shippable result) and, given a ``measure`` function (the
``train-pairs`` command passes `explore.evaluation.quality.factor_accuracy`: per-object accuracy,
binding, colour swaps on fixed full captions), its record goes into ``learning_curve.jsonl``.
``out/threads`` (a number) sets the torch threads live, so a long run can share a machine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from tqdm.auto import tqdm
from transformers import CLIPTextModelWithProjection

from ..shapes.tokenizer import build_tokenizer
from ..shapes.train import EMA, encode_latents, save_model
from ..shapes.world import vocabulary as shapes_vocabulary
from .world import random_caption, render, sample_pair, vocabulary


@dataclasses.dataclass
class PairsConfig:
    """Settings of the Pairs model and its training run (saved in ``explore.json`` and ``ckpt.pt``)."""

    init_from: str = "shapes"  # a ShapesWorld-layout folder, or "shapes" for the shipped model
    extra_layers: int = 4  # zero-initialised joint blocks inserted before the last block
    model_max_length: int = 32
    n_data: int = 100_000
    p_drop: float = 0.1
    p_omit: float = 0.1
    steps: int = 20_000
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 200
    decay_from: float = 0.7  # constant lr, then cosine to 10 % over the last 30 % of the steps
    ema: float = 0.999
    p_uniform_t: float = 0.2
    seed: int = 0
    ckpt_every: int = 250
    eval_every: int = 500
    eval_n: int = 128
    eval_seed: int = 4242
    sample_steps: int = 20
    guidance: float = 4.0
    shift: float = 1.0
    image_size: int = 64
    max_sequence_length: int = 0  # no T5: the text stream is the CLIP tokens


def _lr(step: int, cfg: PairsConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    start = int(cfg.decay_from * cfg.steps)
    if step < start:
        return cfg.lr
    progress = (step - start) / max(1, cfg.steps - start)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _grow_text_encoder(te, vocab_size: int, positions: int):
    """A copy of a CLIP text encoder with ``vocab_size`` tokens and ``positions`` positions (old rows kept)."""
    cfg = te.config.to_dict()
    cfg.update(vocab_size=vocab_size, max_position_embeddings=positions)
    new = CLIPTextModelWithProjection(type(te.config)(**cfg))
    old = te.state_dict()
    state = new.state_dict()
    for k, v in old.items():
        if k not in state:
            continue
        if state[k].shape == v.shape:
            state[k] = v
        elif k.endswith("token_embedding.weight") or k.endswith("position_embedding.weight"):
            w = state[k].clone()
            w[: v.shape[0]] = v
            if k.endswith("position_embedding.weight"):  # new positions start as the last old one
                w[v.shape[0] :] = v[-1]
            state[k] = w
    new.load_state_dict(state)
    return new


def _grow_transformer(tr, extra: int):
    """An SD3 transformer with ``extra`` identity-initialised joint blocks inserted before the last one."""
    if extra <= 0:
        return tr
    cfg = dict(tr.config)
    n = cfg["num_layers"]
    cfg["num_layers"] = n + extra
    new = SD3Transformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    state = new.state_dict()
    old = tr.state_dict()
    remap = {i: i for i in range(n - 1)}
    remap[n - 1] = n - 1 + extra  # the last (context_pre_only) block stays last
    for k, v in old.items():
        if k.startswith("transformer_blocks."):
            i = int(k.split(".")[1])
            k2 = f"transformer_blocks.{remap[i]}." + k.split(".", 2)[2]
        else:
            k2 = k
        state[k2] = v
    for j in range(n - 1, n - 1 + extra):  # new blocks: copies of the block before, gates zeroed
        src = n - 2
        for k, v in old.items():
            if k.startswith(f"transformer_blocks.{src}."):
                state[f"transformer_blocks.{j}." + k.split(".", 2)[2]] = v.clone()
        for name in ("norm1.linear", "norm1_context.linear"):
            state[f"transformer_blocks.{j}.{name}.weight"].zero_()
            state[f"transformer_blocks.{j}.{name}.bias"].zero_()
    new.load_state_dict(state)
    return new


def build_pipeline(cfg: PairsConfig):
    """The initial Pairs pipeline: ShapesWorld weights, grown vocabulary / positions / depth.

    ``cfg.init_from`` may also name an exported Pairs model (its ``explore.json`` says world
    ``"pairs"``): training then continues from its weights as they are (a run in a later session
    whose checkpoint is gone starts from the shipped model, with a fresh optimiser and EMA).
    """
    src = Path(__file__).resolve().parent.parent / "shapes" / "model" if cfg.init_from == "shapes" else cfg.init_from
    base = StableDiffusion3Pipeline.from_pretrained(str(src), text_encoder_3=None, tokenizer_3=None)
    meta = Path(src) / "explore.json"
    if meta.is_file() and json.loads(meta.read_text()).get("world") == "pairs":
        n_layers = base.transformer.config.num_layers
        if base.tokenizer.model_max_length != cfg.model_max_length:
            raise ValueError(f"{src}: tokenizer length {base.tokenizer.model_max_length}, config asks "
                             f"{cfg.model_max_length}")
        base.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)
        base.set_progress_bar_config(disable=True)
        cfg.extra_layers = n_layers - _shapes_layers()
        return base
    words = shapes_vocabulary() + [w for w in vocabulary() if w not in shapes_vocabulary()]  # old ids kept
    tok = build_tokenizer(cfg.model_max_length, words)
    te1 = _grow_text_encoder(base.text_encoder, len(tok), cfg.model_max_length)
    te2 = _grow_text_encoder(base.text_encoder_2, len(tok), cfg.model_max_length)
    tr = _grow_transformer(base.transformer, cfg.extra_layers)
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift),
        vae=base.vae, text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=copy.deepcopy(tok),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _shapes_layers() -> int:
    cfg = json.loads((Path(__file__).resolve().parent.parent / "shapes" / "model" / "transformer" /
                      "config.json").read_text())
    return int(cfg["num_layers"])


def _sample_t(n: int, p_uniform: float, gen: torch.Generator) -> torch.Tensor:
    t = torch.sigmoid(torch.randn(n, generator=gen))
    u = torch.rand(n, generator=gen)
    return torch.where(torch.rand(n, generator=gen) < p_uniform, u, t)


def _threads(out: Path) -> None:
    f = out / "threads"
    if f.is_file():
        try:
            k = int(f.read_text().strip())
        except ValueError:
            return
        if k >= 1 and k != torch.get_num_threads():
            torch.set_num_threads(k)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(out: str | Path, cfg: PairsConfig | None = None, device: str = "cpu", progress: bool = True,
          measure: Callable[[Any], dict] | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last learning-curve record.

    ``measure(pipe) -> dict``: called with the EMA weights every ``eval_every`` steps (and at step 0).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    resume = torch.load(ckpt_path, weights_only=False) if ckpt_path.is_file() else None
    if resume is not None:
        cfg = PairsConfig(**{**resume["config"], **({} if cfg is None else {"steps": cfg.steps})})
    cfg = cfg or PairsConfig()
    torch.manual_seed(cfg.seed)
    pipe = build_pipeline(cfg).to(device)
    vae = pipe.vae.eval().requires_grad_(False)

    # data: rendered and encoded once (cached in out/ so a resume skips it)
    data_path = out / f"data_{cfg.n_data}_{cfg.seed}.pt"
    rng_data = random.Random(cfg.seed)
    scenes = [sample_pair(rng_data) for _ in range(cfg.n_data)]
    if data_path.is_file():
        latents = torch.load(data_path)
    else:
        images = np.stack([render(s, cfg.image_size) for s in tqdm(scenes, desc="render", disable=not progress)])
        latents = encode_latents(vae, images)
        _atomic_torch_save(latents, data_path)
        del images
    shift, scale = float(vae.config.shift_factor), float(vae.config.scaling_factor)
    z_all = ((latents - shift) * scale).to(device)

    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMA(modules, cfg.ema)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    rng = random.Random(cfg.seed + 3)
    start = 0
    if resume is not None:
        for m, sd in zip(modules, resume["modules"]):
            m.load_state_dict(sd)
        opt.load_state_dict(resume["optimizer"])
        for s, v in zip(ema.shadow, resume["ema"]):
            s.copy_(v)
        ema.step = resume["ema_step"]
        gen.set_state(resume["gen"])
        rng.setstate(resume["rng"])
        torch.set_rng_state(resume["torch_rng"])
        start = resume["step"]
    curve_path = out / "learning_curve.jsonl"
    t_start = time.time()
    seconds_before = resume.get("seconds", 0.0) if resume else 0.0

    def checkpoint(step: int) -> None:
        _atomic_torch_save({
            "config": dataclasses.asdict(cfg), "step": step, "modules": [m.state_dict() for m in modules],
            "optimizer": opt.state_dict(), "ema": [s.clone() for s in ema.shadow], "ema_step": ema.step,
            "gen": gen.get_state(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
            "seconds": seconds_before + time.time() - t_start,
        }, ckpt_path)

    def evaluate(step: int) -> dict:
        for m in modules:
            m.eval()
        ema.swap()
        try:
            rec = {"step": step, "seconds": round(seconds_before + time.time() - t_start, 1)}
            if measure is not None:
                rec.update(measure(pipe))
            export(pipe, cfg, out / "model", {"training": {"step": step, "seconds": rec["seconds"]}})
        finally:
            ema.swap()
            for m in modules:
                m.train()
        with open(curve_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    for m in modules:
        m.train()
    last = None
    if start == 0:
        last = evaluate(0)
    bar = tqdm(range(start, cfg.steps), desc="pairs", initial=start, total=cfg.steps, disable=not progress)
    loss_avg = None
    for step in bar:
        if step % 20 == 0:
            _threads(out)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        idx = torch.randint(len(scenes), (cfg.batch,), generator=gen)
        prompts = ["" if rng.random() < cfg.p_drop else random_caption(scenes[i], rng, cfg.p_omit)
                   for i in idx.tolist()]
        c, _, p, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                        max_sequence_length=0)
        z0 = z_all[idx.to(device)]
        eps = torch.randn(z0.shape, generator=gen).to(device)
        t = _sample_t(cfg.batch, cfg.p_uniform_t, gen).to(device)
        z_t = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps
        v = pipe.transformer(hidden_states=z_t, encoder_hidden_states=c, pooled_projections=p,
                             timestep=t * 1000).sample
        loss = F.mse_loss(v, eps - z0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{_lr(step, cfg):.1e}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = evaluate(done)
            last["loss_avg"] = loss_avg
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            checkpoint(done)
    return last or {}


def export(pipe, cfg: PairsConfig, folder: Path, extra: dict | None = None) -> None:
    """Save the pipeline as a ``save_pretrained`` folder with its ``explore.json`` (world ``"pairs"``)."""
    save_model(pipe, cfg, folder, {"model_id": "shapes-pairs", "world": "pairs", **(extra or {})})
