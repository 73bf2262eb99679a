#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU (H100/H200), in at most about 8 minutes:
#   1. the machine profile (dtype, the GPU's peak);
#   2. the trainer's step against the plain PyTorch step (naive_gpt_step.py), same shape and dtype, side by side;
#   3. one training at autoresearch's scale (depth 8, width 512, head 128, sequences of 2048, 2^19 tokens per
#      optimizer step, vocabulary 8192, bf16, compiled) for a short budget: tokens/s, MFU, the time split;
#   4. a short bilevel run with --device cuda on the embedded model, where the packages for it are importable.
# Figures go to stdout and to $OUT (default /tmp/gpu_check). Run from the repository root:
#   OUT=/tmp/gpu_check GPT_NAIVE_BENCH=/path/to/naive_gpt_step.py bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-90}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 BILEVEL_CACHE=${BILEVEL_CACHE:-$OUT/cache}
section() { printf '\n==== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || exit 1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
timeout 60 "$PY" -m gpt.machine --device cuda | tee "$OUT/machine.json"

# autoresearch's shape in a copy of train.py (the constants block rewritten; the declarations kept)
SCALE="$OUT/scale"
mkdir -p "$SCALE/gpt"
"$PY" - "$SCALE" <<'PY'
import re, shutil, sys
from pathlib import Path
out = Path(sys.argv[1])
values = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "SEQ_LEN": 2048, "DEVICE_BATCH_SIZE": 32,
          "TOTAL_BATCH_TOKENS": 2**19}
source = Path("gpt/train.py").read_text()
for name, value in values.items():
    source, n = re.subn(rf"^{name} = [^#]*#", f"{name} = {value!r}  #", source, count=1, flags=re.M)
    assert n == 1, name
(out / "train.py").write_text(source)
for f in Path("gpt").glob("*.py"):  # gpt.bench imports gpt.train: the scaled copy stands in for it
    shutil.copy(f, out / "gpt" / f.name)
(out / "gpt" / "train.py").write_text(source)
PY

section "our step against naive_gpt_step.py, autoresearch's shape, bf16"
(cd "$SCALE" && timeout 240 "$PY" -m gpt.bench --device cuda --dtype bf16 --vocab 8192 --seconds 10 --repeats 3 \
  --json "$OUT/bench.json") || echo "bench: failed or timed out (exit $?)"

section "one training at autoresearch's scale, ${BUDGET} s budget"
PYTHONPATH=$PWD timeout $((BUDGET * 2 + 120)) "$PY" "$SCALE/train.py" --device cuda --dtype bf16 --budget-s "$BUDGET" \
  --corpus stdlib --vocab-size 8192 --result-json "$OUT/train.json" 2>&1 | tail -25
[ -f "$OUT/train.json" ] && "$PY" -c "
import json; r = json.load(open('$OUT/train.json'))
print('tokens/s', round(r['tokens_per_s']),
      'MFU %', round(r['mfu_percent'], 1), 'peak from', r['mfu_peak_source'], 'steps', r['num_steps'],
      'peak MiB', round(r['peak_memory_mb']), 'timing', {k: round(v, 1) for k, v in r['timing'].items()})"

section "a short bilevel run on the GPU (embedded model)"
if "$PY" -c "import langgraph, langchain_openai, llama_cpp" 2>/dev/null; then
  timeout 240 "$PY" -m graphs.bilevel --device cuda --budget-s 20 --iterations 4 --segment 2 \
    --run-dir "$OUT/bilevel-run" 2>&1 | tail -30
else
  echo "skipped: langgraph, langchain-openai or llama-cpp-python is not importable here (carry them as wheels)"
fi
section "done"
