"""``quality.json`` and the model card (``README.md``) of a trained embedded-world model folder.

ShapesWorld and ShapesWorld Pairs folders both get one; a Pairs card adds the binding accuracy,
the colour-swap rate, the learning curve (``learning_curve.jsonl`` in the folder, if shipped) and
the decoder fine-tune records of its ``explore.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text, envelope, machine, machine_summary, read_json
from ..pipeline.load import load_pipeline
from ..pipeline.spec import spec
from .quality import factor_accuracy, vae_psnr

WEIGHTS_LICENCE = """
## Licence
The weights were trained from scratch by this project on procedurally generated images (no
third-party data, no weights of another model) and are released under the Apache License 2.0,
the licence of `explore` itself (the `LICENSE` file of the package).
"""


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
    pairs = {k: q.get(k) for k in ("binding_accuracy", "swap_rate", "object_accuracy", "objects_found_mean")} \
        if s.world == "pairs" else {}
    out = envelope(
        cfg.get("model_id") or s.model_id, seed, {"quality_n": quality_n, "sampler": s.sampler},
        time.perf_counter() - t0,
        factor_accuracy=q.get("factor_accuracy"),
        all_factors_accuracy=q.get("all_factors_accuracy"),
        object_found=q.get("object_found"),
        seconds_per_image=q.get("seconds_per_image"),
        **pairs,
        vae_psnr_db=vae_psnr(pipe),
        sampler={**s.sampler, "scheduler": "FlowMatchEulerDiscreteScheduler", "resolution": s.resolution},
        train_seconds=training.get("train_seconds"),
        train_machine=training.get("machine") or machine_summary(m),
        training=training,
    )
    out["machine"] = m
    atomic_write_json(folder / "quality.json", out)
    return out


def write_card(folder: str | Path, training: dict, quality_n: int = 256, device: str = "cpu",
               seed: int = 1234) -> dict:
    """Measure the model and write its card next to the weights."""
    training = {**training, "machine": training.get("machine") or machine_summary()}
    q = measure(folder, quality_n=quality_n, seed=seed, device=device, training=training)
    folder = Path(folder)
    if read_json(folder / "explore.json").get("world") == "pairs":
        atomic_write_text(folder / "README.md", pairs_card(folder, q))
        return q
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
{WEIGHTS_LICENCE}"""
    atomic_write_text(folder / "README.md", card)
    return q


def _stages_text(stages: list[dict], machine_name: str) -> str:
    lines = [f"{i + 1}. `{st['command']}` — {st['what']}" for i, st in enumerate(stages)]
    total = sum(st.get("minutes", 0) for st in stages)
    return "\n".join(lines) + f"\n\nTraining took {total:.0f} min in all on {machine_name}."


def pairs_card(folder: Path, q: dict) -> str:
    """The card of a ShapesWorld Pairs model folder (`write_card` measures first)."""
    meta = read_json(folder / "explore.json")
    cfg, training = meta["config"], meta.get("training", {})
    acc = q.get("factor_accuracy") or {}
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in acc.items())
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    stages = training.get("stages") or [{"command": f"python -m explore train-pairs --out DIR --seed {cfg['seed']}",
                                         "what": f"{training.get('step', cfg['steps'])} diffusion steps",
                                         "minutes": (training.get("seconds") or 0) / 60}]
    dec = meta.get("decoder_finetune") or []
    dec_text = "".join(
        f"\n- Decoder fine-tune {i + 1} (`python -m explore train-pairs-decoder --model FOLDER --steps {d['steps']} "
        f"--lr {d['config']['lr']} --n-data {d['config']['n_data']} --seed {d['config']['seed']}`): batch "
        f"{d['config']['batch']}; VAE PSNR {d['psnr_before_db']:.1f} → {d['psnr_after_db']:.1f} dB, "
        f"{d['seconds'] / 60:.0f} min." for i, d in enumerate(dec))
    curve_path = folder / "learning_curve.jsonl"
    curve = ""
    if curve_path.is_file():
        recs = [json.loads(x) for x in curve_path.read_text().splitlines() if x.strip()]
        head = ("| step | hours | binding | colour swaps | " + " | ".join(acc) + " |\n|"
                + "---|" * (4 + len(acc)))
        body = "\n".join(
            f"| {r['step']} | {r['seconds'] / 3600:.2f} | {r.get('binding_accuracy', float('nan')):.2f} | "
            f"{(r.get('swap_rate') or 0):.2f} | "
            + " | ".join(f"{(r.get('factor_accuracy') or {}).get(k, float('nan')):.2f}" for k in acc) + " |"
            for r in recs)
        curve = (f"\n## Learning curve (`learning_curve.jsonl`)\nThe EMA weights every {cfg['eval_every']} steps, "
                 f"{cfg['eval_n']} fixed full captions (seed {cfg['eval_seed']}), scored like `quality.json`"
                 + (" — during training, so decoded by the one-object decoder, before the decoder fine-tune "
                    "(sharper edges read better: compare the last row with `quality.json`)" if dec else "")
                 + f":\n\n{head}\n{body}\n")
    return f"""# ShapesWorld Pairs — a trained miniature SD3 with two objects

A small Stable-Diffusion-3-architecture pipeline (`StableDiffusion3Pipeline`: `AutoencoderKL`,
two CLIP text encoders, `SD3Transformer2DModel`, no T5) trained on ShapesWorld Pairs
(`explore.pairs`): two objects of different shapes and colours, each with its own size and
position (cells two apart in a 3x3 grid, never touching), on a black, white or gray background,
64x64 pixels, captions that bind every attribute next to its noun (four templates, either
order, factors sometimes left out). It is the model of `evaluate --benchmark pairs`, where an
edit of one object can leak into the other.

Load it with `explore.load_pipeline("shapes-pairs")`, or as any diffusers pipeline:

```python
StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
```

and pass `max_sequence_length={cfg['max_sequence_length']}` (no T5 tokens) when you call it directly.

## How it was made
It starts from the shipped one-object ShapesWorld model (curriculum): its VAE encoder frozen, the
text encoders grown to {cfg['model_max_length']} positions and the two-object vocabulary, and {cfg['extra_layers']}
joint blocks inserted before the last one as exact identities (zero-initialised modulation).
Transformer and both text encoders trained on rectified flow (v = eps - z) on {cfg['n_data']} rendered scenes
(seed {cfg['seed']}), batch {cfg['batch']}, AdamW lr {cfg['lr']}, EMA {cfg['ema']} (the EMA weights ship), caption
dropout {cfg['p_drop']}, factors left out with p={cfg['p_omit']}.{dec_text}

Every command, in order:

{_stages_text(stages, training.get('machine') or q.get('train_machine') or 'this machine')}

## Measured quality (`quality.json`)
Pairs readers (`explore.pairs.readers`) on {q['settings']['quality_n']} images generated from seeded full
captions (seed {q['seed']}) with the default sampler ({q['sampler']['steps']} Euler steps, guidance
{q['sampler']['guidance']}); per-object accuracy pools both objects of every image:

| factor | accuracy |
|---|---|
{rows}

- **Binding accuracy** (both objects and the background entirely right): {q.get('binding_accuracy') or 0:.3f}
- **Colour-swap rate** (an object shows the other object's colour): {q.get('swap_rate') or 0:.3f}
- Objects found per image: {q.get('objects_found_mean') or 0:.2f} of 2
- VAE reconstruction PSNR on 512 held-out renders: {q['vae_psnr_db']:.1f} dB

Folder size: {size_mb:.1f} MB. Measured on {machine_summary(q['machine'])}.
{curve}{WEIGHTS_LICENCE}"""
