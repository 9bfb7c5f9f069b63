"""Train the ShapesWorld model: a tiny VAE, two small CLIP text encoders and a small SD3 transformer.

Two stages, both seeded and reproducible on 2 CPU cores:

1. **VAE** (``AutoencoderKL``, 4x down-sampling, 4 latent channels): L1 + MSE reconstruction with a
   tiny KL term, first on random 32x32 crops (4x cheaper; convolutions do not care), then on whole
   64x64 images so GroupNorm and the mid-block attention see full frames. Afterwards the latent
   ``shift_factor`` / ``scaling_factor`` are set from the data (zero mean, unit variance), as SD3 does.
2. **Diffusion** (rectified flow, v = eps - z): the transformer and both text encoders are trained
   jointly through the pipeline's own ``encode_prompt``, with caption dropout to ``""`` (what the
   pipeline encodes as the negative prompt, so classifier-free guidance works). An EMA of the
   weights is what ships.

The result is saved with ``StableDiffusion3Pipeline.save_pretrained`` plus ``explore.json`` (the
settings the toolkit needs: resolution, ``max_sequence_length`` and the default sampler).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from ..images import psnr
from ..io import replace_folder, write_model_json
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
from .world import random_caption, render, sample_scene


@dataclasses.dataclass
class ShapesConfig:
    """Architecture and training settings of the ShapesWorld model (saved in ``explore.json``)."""

    image_size: int = 64
    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_groups: int = 16
    latent_channels: int = 4
    # transformer
    layers: int = 6
    heads: int = 4
    head_dim: int = 32
    patch_size: int = 2
    qk_norm: str = "rms_norm"
    # text encoders (two CLIP stand-ins, as SD3 has CLIP-L and CLIP-G)
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    text_ff: int = 256
    model_max_length: int = 20
    max_sequence_length: int = 0  # no T5: the text stream is exactly the CLIP tokens
    # data
    n_data: int = 60_000
    p_drop: float = 0.1  # caption dropout (classifier-free guidance)
    p_omit: float = 0.15  # each factor left out of a training caption with this probability
    # VAE training
    vae_steps: int = 2500
    vae_full_steps: int = 300
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # diffusion training
    steps: int = 8000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 250
    ema: float = 0.999
    p_uniform_t: float = 0.2  # share of uniform t; the rest logit-normal(0, 1) as in SD3
    seed: int = 0
    # default sampler (tuned after training, see quality.json)
    sample_steps: int = 20
    guidance: float = 4.0
    shift: float = 1.0


def build_pipeline(cfg: ShapesConfig):
    """An untrained ShapesWorld ``StableDiffusion3Pipeline`` (seeded by the caller)."""
    tokenizer = build_tokenizer(cfg.model_max_length)
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_ff,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.model_max_length,
        projection_dim=cfg.text_hidden,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    text_encoder = CLIPTextModelWithProjection(text_cfg)
    text_encoder_2 = CLIPTextModelWithProjection(text_cfg)
    latent = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    inner = cfg.heads * cfg.head_dim
    transformer = SD3Transformer2DModel(
        sample_size=latent,
        patch_size=cfg.patch_size,
        in_channels=cfg.latent_channels,
        num_layers=cfg.layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads,
        joint_attention_dim=2 * cfg.text_hidden,
        caption_projection_dim=inner,
        pooled_projection_dim=2 * cfg.text_hidden,
        out_channels=cfg.latent_channels,
        pos_embed_max_size=2 * latent // cfg.patch_size,  # room for images up to 2x the training size
        qk_norm=cfg.qk_norm,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_groups,
        sample_size=cfg.image_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,
        scaling_factor=1.0,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=copy.deepcopy(tokenizer),
        text_encoder_3=None,
        tokenizer_3=None,
    )


def images_to_model(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (the SD3 image processor's range)."""
    x = torch.from_numpy(images).to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


@torch.no_grad()
def vae_psnr(vae, images: np.ndarray, batch: int = 128) -> float:
    """PSNR (dB) of ``decode(mean(encode(x)))`` on uint8 images."""
    device = next(vae.parameters()).device
    vals = []
    for i in range(0, len(images), batch):
        x = images_to_model(images[i : i + batch], device)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        vals += [psnr(r, o) for r, o in zip((rec.clamp(-1, 1) + 1) / 2, (x + 1) / 2)]
    return float(np.mean(vals))


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    device = next(vae.parameters()).device
    out = []
    for i in tqdm(range(0, len(images), batch), desc="encode latents", leave=False):
        out.append(vae.encode(images_to_model(images[i : i + batch], device)).latent_dist.mean.cpu())
    return torch.cat(out)


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_vae(vae, images: np.ndarray, cfg: ShapesConfig, device, log) -> None:
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    total = cfg.vae_steps + cfg.vae_full_steps
    bar = tqdm(range(total), desc="vae")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * cosine_lr(step, total, 100)
        idx = torch.randint(len(images), (cfg.vae_batch,), generator=gen).numpy()
        x = images_to_model(images[idx], device)
        if step < cfg.vae_steps:  # random crops
            c = cfg.vae_crop
            oy, ox = torch.randint(0, cfg.image_size - c + 1, (2,), generator=gen).tolist()
            x = x[:, :, oy : oy + c, ox : ox + c]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log({"stage": "vae", "step": step, "loss": loss.item()})


class EMA:
    """Exponential moving average of parameters (with the usual warm-up of the decay)."""

    def __init__(self, modules, decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.step = 0

    @torch.no_grad()
    def update(self):
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def swap(self):
        """Exchange live and EMA weights (call twice to restore)."""
        for p, s in zip(self.params, self.shadow):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def sample_t(n: int, cfg: ShapesConfig, gen: torch.Generator) -> torch.Tensor:
    t = torch.sigmoid(torch.randn(n, generator=gen))
    uniform = torch.rand(n, generator=gen)
    use_u = torch.rand(n, generator=gen) < cfg.p_uniform_t
    return torch.where(use_u, uniform, t)


def save_model(pipe, cfg: ShapesConfig, out: Path, extra: dict | None = None) -> None:
    """Save atomically: write beside ``out``, then swap the folder in."""
    from ..pipeline.families.sd3 import SD3  # the family the saved folder declares

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    spec = {
        "model_id": "shapes",
        "family": SD3.name,
        "world": "shapes",
        "resolution": cfg.image_size,
        "max_sequence_length": cfg.max_sequence_length,
        "sampler": {"steps": cfg.sample_steps, "guidance": cfg.guidance, "shift": cfg.shift},
        "config": dataclasses.asdict(cfg),
        **(extra or {}),
    }
    write_model_json(tmp, spec)
    for keep in ("README.md", "quality.json"):
        if (out / keep).exists():
            shutil.copy2(out / keep, tmp / keep)
    replace_folder(tmp, out)


def train(out: str | Path, cfg: ShapesConfig | None = None, device: str = "cpu", ckpt_every: int = 1000,
          init_from: str | Path | None = None) -> dict:
    """Train the ShapesWorld model into ``out``; returns a summary (timings, VAE PSNR, final loss).

    ``init_from``: a saved ShapesWorld folder to continue from — its VAE is kept (stage 1 is
    skipped) and the diffusion stage runs ``cfg.steps`` more steps with a fresh optimiser.
    """
    cfg = cfg or ShapesConfig()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    log_path = out.with_name(out.name + ".log.jsonl")
    log_file = open(log_path, "w")

    def log(rec):
        rec["seconds"] = round(time.time() - t_start, 2)
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()

    if init_from is not None:
        pipe = StableDiffusion3Pipeline.from_pretrained(init_from, text_encoder_3=None, tokenizer_3=None).to(device)
    else:
        pipe = build_pipeline(cfg).to(device)
    rng = random.Random(cfg.seed)
    scenes = [sample_scene(rng) for _ in range(cfg.n_data)]
    images = np.stack([render(s, cfg.image_size) for s in tqdm(scenes, desc="render", leave=False)])
    held = np.stack([render(sample_scene(rng), cfg.image_size) for _ in range(512)])
    log({"stage": "data", "n": len(scenes)})

    # ---- stage 1: VAE ------------------------------------------------------------------------
    vae = pipe.vae
    if init_from is None:
        vae.train()
        train_vae(vae, images, cfg, device, log)
    vae.eval()
    vae.requires_grad_(False)
    vae_db = vae_psnr(vae, held)
    latents = encode_latents(vae, images)
    if init_from is None:
        shift = float(latents.mean())
        scale = float(1.0 / latents.std())
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    else:
        shift, scale = float(vae.config.shift_factor), float(vae.config.scaling_factor)
    log({"stage": "vae_done", "psnr_db": vae_db, "shift": shift, "scale": scale})
    t_vae = time.time() - t_start

    # ---- stage 2: diffusion -------------------------------------------------------------------
    z_all = ((latents - shift) * scale).to(device)
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    for m in modules:
        m.train()
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMA(modules, cfg.ema)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    bar = tqdm(range(cfg.steps), desc="diffusion")
    loss_avg = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * cosine_lr(step, cfg.steps, cfg.warmup)
        idx = torch.randint(len(scenes), (cfg.batch,), generator=gen)
        prompts = [
            "" if rng.random() < cfg.p_drop else random_caption(scenes[i], rng, cfg.p_omit) for i in idx.tolist()
        ]
        c, _, p, _ = pipe.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=False,
            max_sequence_length=cfg.max_sequence_length,
        )
        z0 = z_all[idx.to(device)]
        eps = torch.randn(z0.shape, generator=gen).to(device)
        t = sample_t(cfg.batch, cfg, gen).to(device)
        tt = t.view(-1, 1, 1, 1)
        z_t = (1 - tt) * z0 + tt * eps
        v = pipe.transformer(
            hidden_states=z_t, encoder_hidden_states=c, pooled_projections=p, timestep=t * 1000
        ).sample
        loss = F.mse_loss(v, eps - z0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss_avg:.4f}")
            log({"stage": "diffusion", "step": step, "loss": loss.item(), "loss_avg": loss_avg})
        if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < cfg.steps:
            ema.swap()
            save_model(pipe, cfg, out, {"checkpoint_step": step + 1})
            ema.swap()
    for m in modules:
        m.eval()
    ema.swap()  # ship the EMA weights
    summary = {
        "vae_psnr_db": vae_db,
        "vae_seconds": t_vae,
        "train_seconds": time.time() - t_start,
        "final_loss": loss_avg,
        "steps": cfg.steps,
        "init_from": str(init_from) if init_from else None,
    }
    save_model(pipe, cfg, out, {"training": summary})
    log({"stage": "done", **summary})
    log_file.close()
    return summary
