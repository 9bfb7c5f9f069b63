"""Fine-tune a Pairs model's VAE *decoder* on two-object renders; the encoder stays as it is.

The Pairs model starts from the one-object ShapesWorld VAE, frozen, so the transformer is trained
on that encoder's latents. Two objects per picture mean twice the edges, and the one-object
decoder reconstructs them less well (about 28 dB against 33 dB on one object). Training only the
decoder (and ``post_quant_conv``) changes no latent: the transformer, every direction and every
number measured in latent space stay valid; only the pixels get sharper.

Data: ``n_data`` seeded Pairs renders (``seed``), encoded once (posterior mean and std); each step
decodes a posterior sample (the noise the transformer's own samples carry) and is scored with
L1 + MSE. PSNR is measured before and after on ``held_n`` renders of another seed, the way
`explore.evaluation.quality.vae_psnr` measures it (posterior mean).
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import read_json, replace_folder, write_model_json
from ..shapes.train import images_to_model, vae_psnr
from .world import render, sample_pair


@dataclasses.dataclass
class DecoderConfig:
    steps: int = 1500
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 50
    n_data: int = 20_000
    seed: int = 7
    held_n: int = 512
    held_seed: int = 999  # the seed `quality.vae_psnr` renders its held-out scenes with


def _renders(n: int, seed: int, size: int) -> np.ndarray:
    rng = random.Random(seed)
    return np.stack([render(sample_pair(rng), size) for _ in range(n)])


def _lr(step: int, cfg: DecoderConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def finetune_vae_decoder(vae: AutoencoderKL, cfg: DecoderConfig, size: int = 64, device: str = "cpu",
                         progress: bool = True) -> dict:
    """Train ``vae``'s decoder in place; returns PSNR before/after, steps, seconds and the last loss."""
    t0 = time.perf_counter()
    vae = vae.to(device)
    vae.requires_grad_(False).eval()
    held = _renders(cfg.held_n, cfg.held_seed, size)
    before = vae_psnr(vae, held)
    images = _renders(cfg.n_data, cfg.seed, size)
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), 256), desc="encode", disable=not progress, leave=False):
            post = vae.encode(images_to_model(images[i : i + 256], device)).latent_dist
            means.append(post.mean.cpu())
            stds.append(post.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    params = list(vae.decoder.parameters())
    if vae.post_quant_conv is not None:
        params += list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_avg = None
    for step in tqdm(range(cfg.steps), desc="decoder", disable=not progress):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        idx = torch.randint(len(images), (cfg.batch,), generator=gen)
        z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        x = images_to_model(images[idx.numpy()], device)
        rec = vae.decode(z.to(device)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
    vae.requires_grad_(False).eval()
    after = vae_psnr(vae, held)
    return {"psnr_before_db": before, "psnr_after_db": after, "loss": loss_avg, "steps": cfg.steps,
            "seconds": time.perf_counter() - t0, "config": dataclasses.asdict(cfg)}


def finetune_folder_decoder(folder: str | Path, cfg: DecoderConfig | None = None, device: str = "cpu",
                            progress: bool = True) -> dict:
    """Fine-tune the decoder of the Pairs model in ``folder`` and swap its ``vae/`` in atomically.

    The record (PSNR before/after, settings, seconds) is appended to ``explore.json``'s
    ``decoder_finetune`` list, so a card can say exactly how the shipped decoder was made.
    """
    folder = Path(folder)
    cfg = cfg or DecoderConfig()
    meta_path = folder / "explore.json"
    if not meta_path.is_file() or not (folder / "vae").is_dir():
        raise InputError(f"{folder} is not a model folder (explore.json and vae/ expected)")
    meta = read_json(meta_path)
    if meta.get("world") != "pairs":
        raise InputError(f"{folder} is a {meta.get('world')!r} model; the decoder fine-tune is for Pairs models")
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"))
    rec = finetune_vae_decoder(vae, cfg, size=int(meta.get("resolution", 64)), device=device, progress=progress)
    tmp = folder / "vae.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    vae.to("cpu").save_pretrained(tmp, safe_serialization=True)
    replace_folder(tmp, folder / "vae")
    meta["decoder_finetune"] = [*meta.get("decoder_finetune", []), rec]
    write_model_json(folder, meta)
    return rec
