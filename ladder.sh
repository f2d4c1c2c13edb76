#!/usr/bin/env bash
# The whole SafeLadder, end to end: SFT -> m3a -> m3b -> cale -> search, each rung evaluated on the
# held-out split, then one summary table and the AI-45 plot.
#
#   bash ladder.sh                                            # tiny world, CPU
#   CONFIG=configs/qwen2_5_vl_7b.py NPROC=8 bash ladder.sh    # one 8-GPU node
#   ARGS="optim.steps=4" bash ladder.sh                       # extra key=value for every rung
#
# Idempotent: a rung whose model/ export exists is skipped; an interrupted rung resumes from its
# checkpoint (the training scripts do that by themselves).
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-configs/tiny.py}
NPROC=${NPROC:-1}
OUT=${OUT:-out/$(basename "$CONFIG" .py)}
read -r -a EXTRA <<< "${ARGS:-}"
if [ "$NPROC" -gt 1 ]; then RUN=(torchrun --standalone --nproc_per_node "$NPROC"); else RUN=(python); fi

rung() {  # rung <stage> <script> [init]
  local stage=$1 script=$2 init=${3:-}
  if [ -f "$OUT/$stage/model/config.json" ]; then
    echo "== $stage: done, skipped ($OUT/$stage/model)"
  else
    echo "== $stage"
    "${RUN[@]}" "$script" --config "$CONFIG" stage="$stage" out_dir="$OUT/$stage" \
      ${init:+init="$init"} io.progress=false "${EXTRA[@]}"
  fi
  if [ ! -f "$OUT/$stage/model/eval_tiny.json" ]; then
    python eval.py --model "$OUT/$stage/model" --config "$CONFIG" "${EXTRA[@]}" > "$OUT/$stage/eval.log"
  fi
}

rung sft train_sft.py
rung m3a train_grpo.py "$OUT/sft/model"
rung m3b train_grpo.py "$OUT/m3a/model"
rung cale train_grpo.py "$OUT/m3b/model"
rung search train_grpo.py "$OUT/cale/model"

python eval.py --reuse --plot "$OUT/ai45.png" --config "$CONFIG" "${EXTRA[@]}" \
  --model "$OUT"/{sft,m3a,m3b,cale,search}/model --names sft m3a m3b cale search | tee "$OUT/summary.txt"
