#!/usr/bin/env bash
# The GPU checks of Stage 1 in one go, for a lent GPU machine (CI has no GPU): the `gpu`-marked tests,
# then LAQ throughput (bf16 + SDPA + fused AdamW, eager and compiled) next to the published
# implementation's setup (its ops, fp32, plain Adam) on the same card. Results go to $OUT (default
# ./gpu_check_out): summary.txt (device, tables), gpu_tests.log, laq_*.json, bench.err (at most 8 files:
# what the device tool brings back).
#
#     bash benchmarks/gpu_check.sh            # from the repository root, with lapa importable
#
# Needs torch, lightning, einops, pytest and lapa's light dependencies (omegaconf, hydra-core,
# webdataset, braceexpand, simplejpeg); on a bare GPU image put those on PYTHONPATH first.
#
# Budget about 10 minutes on an H100. 2026-11-27: the tests took 117-143 s; a whole-model torch.compile
# of the paper size did not finish in 180 s, so `--compile` compiles per layer (LAQ.compile_layers). The
# stages run most telling first and write as they go: a run cut short keeps what it measured.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/summary.txt"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
  | tee -a "$OUT/summary.txt"

bench() {  # NAME TIMEOUT ARGS...: JSON in $OUT/laq_NAME.json, a table on stdout and in summary.txt
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY benchmarks/laq_throughput.py --device cuda --min-seconds 2 --json "$@" \
    > "$OUT/laq_$name.json" 2>> "$OUT/bench.err" || echo "laq_$name: exit $?" | tee -a "$OUT/summary.txt"
  $PY - "$OUT/laq_$name.json" <<'PY' | tee -a "$OUT/summary.txt"
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

# Most telling first, so that a run cut short by the device budget still answers the main questions.
bench paper_compiled 170 --sizes paper --compile --published-setup
timeout 170 $PY -m pytest -q -m gpu tests/laq/test_gpu.py -p no:cacheprovider -W ignore::UserWarning 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -15
bench paper 100 --sizes paper --published-setup
# The small sizes are launch-bound at batch 8: CUDA graphs (reduce-overhead) are what can help there.
bench tiny_graphs 110 --sizes tiny --compile --compile-mode reduce-overhead --published-setup
