#!/usr/bin/env bash
# The GPU checks of Stage 1 in one go, for a lent GPU machine (CI has no GPU): the `gpu`-marked tests,
# then LAQ throughput (bf16 + SDPA + fused AdamW, eager and compiled) next to the published
# implementation's setup (its ops, fp32, plain Adam) on the same card. Results go to $OUT (default
# ./gpu_check_out): gpu.txt, gpu_tests.log, laq_*.json and the tables in laq_*.txt.
#
#     bash benchmarks/gpu_check.sh            # from the repository root, with lapa importable
#
# Budget about 9 minutes on an H100 (measured 2026-11-27: tests 143 s, eager tables 3 min); torch.compile
# of all three sizes did not finish in 200 s there, so the compiled table covers the paper size only.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"

bench() {  # NAME TIMEOUT ARGS...: a table on stdout and in $OUT/laq_NAME.txt, JSON in $OUT/laq_NAME.json
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY benchmarks/laq_throughput.py --device cuda --min-seconds 2 --json "$@" \
    > "$OUT/laq_$name.json" 2> "$OUT/laq_$name.err" || echo "laq_$name: exit $?"
  $PY - "$OUT/laq_$name.json" <<'PY' | tee "$OUT/laq_$name.txt"
import json, sys
rows = json.load(open(sys.argv[1])) if open(sys.argv[1]).read().strip() else []
for r in rows:
    pub = (f" | published setup {r['published_setup_train_samples_per_s']:.0f} / "
           f"{r['published_setup_infer_pairs_per_s']:.0f} -> {r['vs_published_setup']:.2f}x / "
           f"{r['vs_published_setup_infer']:.2f}x" if "vs_published_setup" in r else "")
    print(f"{r['size']:<7} batch {r['batch']:>3} {r['setup']:<13} train {r.get('train_samples_per_s', 0):8.1f}/s "
          f"infer {r['infer_pairs_per_s']:8.1f}/s MFU {100 * r.get('train_mfu', 0):4.1f}% / "
          f"{100 * r.get('infer_mfu', 0):4.1f}% mem {r.get('max_memory_gib', 0):.1f} GiB{pub}")
PY
}

timeout 300 $PY -m pytest -q -m gpu tests/laq/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
bench eager 150 --sizes tiny,medium,paper --published-setup
bench eager_b64 90 --sizes tiny,medium --gpu-batch 64 --published-setup
bench compiled 200 --sizes paper --compile
