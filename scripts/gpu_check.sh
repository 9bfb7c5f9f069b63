#!/usr/bin/env bash
# The prepared GPU check (one H100/H200, under 8 minutes): `python -m explore bench --quick` for
# SD3-medium, SD3.5-large and FLUX.1-dev at 1024² in bf16 with random weights (raw transformer vs
# one HSDS step, a full HSDS edit at the default 40 steps, one generation, peak memory), each
# writing its JSON, then one summary JSON. On a CPU, `--device cpu --tiny` runs the same path on
# tiny random pipelines at 32² in fp32 (what CI runs).
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
if [ "$TINY" = 1 ]; then
  MODELS="tiny-sd3 tiny-sd3.5 tiny-flux"; RES=32; DTYPE=fp32; STEPS=4
else
  MODELS="sd3-medium sd3.5-large flux-dev"; RES=1024; DTYPE=bf16; STEPS=""
fi
mkdir -p "$OUT"
start=$(date +%s)
for m in $MODELS; do
  echo "gpu_check: $m on $DEVICE ($DTYPE, ${RES}²)"
  "$PY" -m explore bench --model "$m" --device "$DEVICE" --dtype "$DTYPE" --res "$RES" --quick --repeat 1 \
    ${STEPS:+--steps "$STEPS"} --out "$OUT/bench_$m.json"
done
"$PY" - "$OUT" $MODELS <<'PYEOF'
import json, sys, time
from pathlib import Path
out, models = Path(sys.argv[1]), sys.argv[2:]
runs = {m: json.loads((out / f"bench_{m}.json").read_text()) for m in models}
keys = ("raw_forward_ms", "hsds_step_ms", "step_over_raw", "batch", "edit_s", "evaluations_per_edit", "generate_s",
        "peak_mem_gb", "image_tokens", "text_tokens", "dtype", "res")
summary = {"machine": next(iter(runs.values()))["machine"], "models": {m: {k: r.get(k) for k in keys}
                                                                      for m, r in runs.items()},
           "written": time.strftime("%Y-%m-%d %H:%M:%S")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
for m, r in summary["models"].items():
    print(f"{m:>12}: forward {r['raw_forward_ms']:.1f} ms (batch {r['batch']}), HSDS step {r['hsds_step_ms']:.1f} ms "
          f"({r['step_over_raw']:.2f}x), edit {r['edit_s']:.1f} s, peak {r['peak_mem_gb']:.1f} GB")
PYEOF
echo "gpu_check: done in $(( $(date +%s) - start )) s; wrote $OUT/gpu_check.json"
