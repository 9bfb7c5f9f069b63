"""``quality.json`` and the model card (``README.md``) of a trained ShapesWorld model folder."""

from __future__ import annotations

import time
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text, envelope, machine, machine_summary, read_json
from ..pipeline.load import load_pipeline
from ..pipeline.spec import spec
from .quality import factor_accuracy, vae_psnr


def measure(folder: str | Path, quality_n: int = 256, seed: int = 1234, device: str = "cpu",
            training: dict | None = None) -> dict:
    """Load the model in ``folder`` and write ``quality.json`` (envelope of DESIGN §0 + quality keys)."""
    t0 = time.perf_counter()
    folder = Path(folder)
    pipe = load_pipeline(folder, device=device)
    s = spec(pipe)
    cfg = read_json(folder / "explore.json")
    training = training or cfg.get("training", {})
    q = factor_accuracy(pipe, n=quality_n, seed=seed) if quality_n else {}
    m = machine()
    out = envelope(
        "shapes", seed, {"quality_n": quality_n, "sampler": s.sampler}, time.perf_counter() - t0,
        factor_accuracy=q.get("factor_accuracy"),
        all_factors_accuracy=q.get("all_factors_accuracy"),
        object_found=q.get("object_found"),
        seconds_per_image=q.get("seconds_per_image"),
        vae_psnr_db=vae_psnr(pipe),
        sampler={**s.sampler, "scheduler": "FlowMatchEulerDiscreteScheduler", "resolution": s.resolution},
        train_seconds=training.get("train_seconds"),
        train_machine=training.get("machine") or machine_summary(m),
        training=training,
    )
    out["machine"] = m
    atomic_write_json(folder / "quality.json", out)
    return out


def write_card(folder: str | Path, training: dict, quality_n: int = 256, device: str = "cpu") -> dict:
    """Measure the model and write its card next to the weights."""
    training = {**training, "machine": training.get("machine") or machine_summary()}
    q = measure(folder, quality_n=quality_n, device=device, training=training)
    folder = Path(folder)
    cfg = read_json(folder / "explore.json")["config"]
    acc = q.get("factor_accuracy") or {}
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in acc.items())
    stages = training.get("stages")
    if stages:  # a model continued from checkpoints: say exactly how it was made
        head = f"- Made in {len(stages)} runs (each continues from the previous one's weights, fresh optimiser):\n"
        stages_text = head + "\n".join(
            f"  {i + 1}. `{st['command']}` — {st['steps']} diffusion steps, {st['minutes']:.0f} min"
            + (f" ({st['note']})" if st.get("note") else "")
            for i, st in enumerate(stages)) + (
            f"\n- Training took {sum(st['minutes'] for st in stages):.0f} min in all on {training['machine']}.")
    else:
        stages_text = (f"- Reproduce: `python -m explore train-shapes --out DIR --seed {cfg['seed']}`.\n"
                       f"- Training took {(training.get('train_seconds') or 0) / 60:.1f} min on "
                       f"{training['machine']}.")
    card = f"""# ShapesWorld — a trained miniature SD3

A small Stable-Diffusion-3-architecture pipeline (`StableDiffusion3Pipeline`: `AutoencoderKL`,
two CLIP text encoders, `SD3Transformer2DModel`, no T5) trained from scratch on ShapesWorld, the
procedural world of `explore.shapes`: one object (circle, square, triangle; six colours; small or
large; 3x3 positions) on a black, white or gray background, 64x64 pixels, captioned from five
templates with factors sometimes left out. It is the default model of `explore` and the ground
truth its metrics are checked against.

Load it like any diffusers pipeline (`explore.load_pipeline("shapes")` does this):

```python
StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
```

and pass `max_sequence_length={cfg['max_sequence_length']}` (no T5 tokens) when you call it directly.

## Data and training
- {cfg['n_data']} seeded renders (`explore.shapes.sample_scene`, seed {cfg['seed']}), jitter in position,
  size and colour; captions from `explore.shapes.random_caption` (each factor left out with
  p={cfg['p_omit']}), caption dropout to `""` with p={cfg['p_drop']}.
- VAE: {cfg['vae_steps']} steps on 32x32 crops + {cfg['vae_full_steps']} on full images, L1 + MSE + {cfg['vae_kl']}·KL;
  latent {cfg['latent_channels']}x16x16, `shift_factor`/`scaling_factor` set to zero mean / unit variance.
- Transformer ({cfg['layers']} joint blocks, {cfg['heads']} heads x {cfg['head_dim']}, patch {cfg['patch_size']},
  qk-norm {cfg['qk_norm']}) and both text encoders trained jointly on rectified flow (v = eps - z),
  {cfg['steps']} steps, batch {cfg['batch']}, AdamW lr {cfg['lr']} cosine, EMA {cfg['ema']} (the EMA weights ship).
{stages_text}

## Measured quality (`quality.json`)
Readers (`explore.shapes.read`) on {q['settings']['quality_n']} images generated from seeded full captions with
the default sampler ({q['sampler']['steps']} Euler steps, guidance {q['sampler']['guidance']}):

| factor | accuracy |
|---|---|
{rows}

All six factors right in one image: {q.get('all_factors_accuracy') or float('nan'):.3f}. VAE reconstruction PSNR on
512 held-out renders: {q['vae_psnr_db']:.1f} dB. Folder size: {size_mb:.1f} MB.
Measured on {machine_summary(q['machine'])}.
"""
    atomic_write_text(folder / "README.md", card)
    return q
