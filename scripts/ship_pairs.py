"""Assemble the shipped Pairs model from a training run and a decoder fine-tune, then measure it.

    python scripts/ship_pairs.py --run RUN --decoder DEC [--command "..."]... [--quality-n 512]

RUN is a `train-pairs --out` folder (its ``model/`` export and ``learning_curve.jsonl``); DEC a
Pairs model folder whose decoder `train-pairs-decoder` fine-tuned. The VAE is frozen during
diffusion training, so every export of a run has the same VAE and DEC's ``vae/`` can be put into
any of them: the result is what `train-pairs-decoder --model RUN/model` would have made. Writes
``explore/pairs/model`` (atomically: built beside it, then swapped in) with the learning curve,
the commands (``--command``, in order, each ``COMMAND||what it did||minutes``) in
``explore.json``'s ``training.stages``, then ``quality.json`` and the card (`model-card`).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from explore.evaluation.card import write_card
from explore.io import read_json, replace_folder, write_model_json
from explore.pipeline.load import PAIRS_DIR


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--decoder", required=True)
    ap.add_argument("--command", action="append", default=[], help="COMMAND||what||minutes, in order")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--quality-n", type=int, default=512)
    args = ap.parse_args()
    run, dec = Path(args.run), Path(args.decoder)
    meta_dec = read_json(dec / "explore.json")
    if not meta_dec.get("decoder_finetune"):
        raise SystemExit(f"{dec} has no decoder_finetune record")
    tmp = PAIRS_DIR.with_name("model.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(run / "model", tmp)
    shutil.rmtree(tmp / "vae")
    shutil.copytree(dec / "vae", tmp / "vae")
    shutil.copy2(run / "learning_curve.jsonl", tmp / "learning_curve.jsonl")
    meta = read_json(tmp / "explore.json")
    meta["decoder_finetune"] = meta_dec["decoder_finetune"]
    stages = []
    for c in args.command:
        command, what, minutes = c.split("||")
        stages.append({"command": command, "what": what, "minutes": float(minutes)})
    if stages:
        meta.setdefault("training", {})["stages"] = stages
    if args.machine:
        meta.setdefault("training", {})["machine"] = args.machine
    write_model_json(tmp, meta)
    replace_folder(tmp, PAIRS_DIR)
    q = write_card(PAIRS_DIR, read_json(PAIRS_DIR / "explore.json").get("training", {}), quality_n=args.quality_n)
    print(json.dumps({k: q.get(k) for k in ("factor_accuracy", "binding_accuracy", "swap_rate", "objects_found_mean",
                                            "vae_psnr_db")}, indent=1))


if __name__ == "__main__":
    main()
