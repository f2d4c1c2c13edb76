#!/usr/bin/env bash
# The whole SafeLadder, end to end: SFT -> m3a -> m3b -> cale -> search, each rung evaluated on the
# held-out split, then one summary table and the AI-45 plot.
#
#   bash ladder.sh                                            # tiny world, CPU
#   SEEDS="0 1 2" bash ladder.sh                              # three seeds: mean [min, max] per rung
#   CONFIG=configs/qwen2_5_vl_7b.py NPROC=8 bash ladder.sh    # one 8-GPU node
#   ARGS="optim.steps=4" bash ladder.sh                       # extra key=value for every rung
#
# SEEDS unset: one ladder in $OUT with the config's own seeds. SEEDS="0 1 2": one ladder per seed S
# in $OUT/seedS, with seed=S world.seed=S (its own world draw and training stream), then the summary
# prints every metric as mean [min, max] over the seeds and the plot draws one path per seed.
# Idempotent: a rung whose model/ export exists is skipped; an interrupted rung resumes from its
# checkpoint (the training scripts do that by themselves).
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-configs/tiny.py}
NPROC=${NPROC:-1}
OUT=${OUT:-out/$(basename "$CONFIG" .py)}
SEEDS=${SEEDS:-}
read -r -a EXTRA <<< "${ARGS:-}"
if [ "$NPROC" -gt 1 ]; then RUN=(torchrun --standalone --nproc_per_node "$NPROC"); else RUN=(python); fi
STAGES=(sft m3a m3b cale search)

rung() {  # rung <dir> <stage> <script> [init]; SEED_ARGS: this ladder's seeds
  local dir=$1 stage=$2 script=$3 init=${4:-}
  if [ -f "$dir/$stage/model/config.json" ]; then
    echo "== $stage: done, skipped ($dir/$stage/model)"
  else
    echo "== $stage${SEED_ARGS[*]:+ (${SEED_ARGS[*]})}"
    "${RUN[@]}" "$script" --config "$CONFIG" stage="$stage" out_dir="$dir/$stage" \
      ${init:+init="$init"} io.progress=false "${SEED_ARGS[@]}" "${EXTRA[@]}"
  fi
  if [ ! -f "$dir/$stage/model/eval_tiny.json" ]; then
    python eval.py --model "$dir/$stage/model" --config "$CONFIG" "${SEED_ARGS[@]}" "${EXTRA[@]}" > "$dir/$stage/eval.log"
  fi
}

ladder() {  # ladder <dir>
  rung "$1" sft train_sft.py
  rung "$1" m3a train_grpo.py "$1/sft/model"
  rung "$1" m3b train_grpo.py "$1/m3a/model"
  rung "$1" cale train_grpo.py "$1/m3b/model"
  rung "$1" search train_grpo.py "$1/cale/model"
}

MODELS=() NAMES=()
if [ -z "$SEEDS" ]; then
  SEED_ARGS=()
  ladder "$OUT"
  for s in "${STAGES[@]}"; do MODELS+=("$OUT/$s/model"); NAMES+=("$s"); done
else
  for seed in $SEEDS; do
    SEED_ARGS=(seed="$seed" world.seed="$seed")
    ladder "$OUT/seed$seed"
  done
  for s in "${STAGES[@]}"; do
    for seed in $SEEDS; do MODELS+=("$OUT/seed$seed/$s/model"); NAMES+=("$s"); done
  done
fi

python eval.py --reuse --plot "$OUT/ai45.png" --config "$CONFIG" "${EXTRA[@]}" \
  --model "${MODELS[@]}" --names "${NAMES[@]}" | tee "$OUT/summary.txt"
