#!/usr/bin/env bash
# The prepared GPU check (one H100/H200, under 8 minutes): `python -m explore bench --quick` for one
# architecture of every family in bf16 with random weights (raw transformer vs one HSDS step, a full
# HSDS edit, one generation, peak memory): SD3-medium, SD3.5-large, FLUX.1-dev (1024², the default 40
# steps), FLUX.2 [klein] 4B, Z-Image-Turbo, Qwen-Image (1024², 10 steps) and FLUX.2 [dev] (512², 10
# steps); Qwen-Image and FLUX.2 [dev] with int8 weights, which an 80 GB card needs for them. Each
# writes its JSON with the meta-device estimate of the same run (the preflight `bench` makes on a
# GPU) beside the measured peak; then one summary JSON to paste into README. On a CPU,
# `--device cpu --tiny` runs the same path on the tiny random pipeline of every family at 32² in
# fp32 (what CI runs).
#
#   bash scripts/gpu_check.sh [--device cuda] [--tiny] [--out runs/gpu_check]
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=0
OUT=runs/gpu_check
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --device D, --tiny, --out DIR)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# model:res:quantization:steps (- = none / the default)
if [ "$TINY" = 1 ]; then
  RUNS="tiny-sd3:32:-:4 tiny-sd3.5:32:-:4 tiny-flux:32:-:4 tiny-flux2:32:-:4 tiny-flux2-dev:32:-:4 \
        tiny-qwen-image:32:-:4 tiny-z-image:32:-:4"; DTYPE=fp32
else
  RUNS="sd3-medium:1024:-:- sd3.5-large:1024:-:- flux-dev:1024:-:- flux2-klein-4b:1024:-:10 \
        z-image-turbo:1024:-:10 qwen-image:1024:int8:10 flux2-dev:512:int8:10"; DTYPE=bf16
fi
mkdir -p "$OUT"
start=$(date +%s)
MODELS=""
run_one() {  # model res quantization steps
  local qflag=() sflag=()
  [ "$3" != - ] && qflag=(--quantization "$3")
  [ "$4" != - ] && sflag=(--steps "$4")
  echo "gpu_check: $1 on $DEVICE ($DTYPE, ${2}², quantization $3)"
  "$PY" -m explore bench --model "$1" --device "$DEVICE" --dtype "$DTYPE" --res "$2" --quick --repeat 1 \
    "${qflag[@]}" "${sflag[@]}" --out "$OUT/bench_$1.json" || echo "gpu_check: $1 failed (see above)" >&2
}
# On a GPU one run at a time (each measures its peak memory); the tiny CPU runs two at a time, one
# thread each (their cost is mostly starting Python).
for run in $RUNS; do
  IFS=: read -r m res q steps <<< "$run"
  MODELS="$MODELS $m"
  if [ "$TINY" = 1 ]; then
    OMP_NUM_THREADS=1 run_one "$m" "$res" "$q" "$steps" &
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 0.2; done
  else
    run_one "$m" "$res" "$q" "$steps"
  fi
done
wait
"$PY" - "$OUT" $MODELS <<'PYEOF'
import json, sys, time
from pathlib import Path
out, models = Path(sys.argv[1]), sys.argv[2:]
runs = {m: json.loads((out / f"bench_{m}.json").read_text()) for m in models if (out / f"bench_{m}.json").exists()}
keys = ("raw_forward_ms", "hsds_step_ms", "step_over_raw", "batch", "edit_s", "evaluations_per_edit", "generate_s",
        "peak_mem_gb", "estimated_peak_gb", "image_tokens", "text_tokens", "dtype", "res")
summary = {"machine": next(iter(runs.values()))["machine"] if runs else None,
           "models": {m: {k: r.get(k) for k in keys} | {"steps": r["settings"].get("steps"),
                                                      "quantization": r["settings"].get("quantization")}
                      for m, r in runs.items()},
           "failed": [m for m in models if m not in runs],
           "written": time.strftime("%Y-%m-%d %H:%M:%S")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
for m, r in summary["models"].items():
    print(f"{m:>15}: forward {r['raw_forward_ms']:.1f} ms (batch {r['batch']}), HSDS step {r['hsds_step_ms']:.1f} ms "
          f"({r['step_over_raw']:.2f}x), edit {r['edit_s']:.1f} s, peak {r['peak_mem_gb']:.1f} GB"
          + (f" (estimated {r['estimated_peak_gb']} GB)" if r.get("estimated_peak_gb") is not None else ""))
if summary["failed"]:
    print("failed:", ", ".join(summary["failed"]))
    sys.exit(1)
PYEOF
echo "gpu_check: done in $(( $(date +%s) - start )) s; wrote $OUT/gpu_check.json"
