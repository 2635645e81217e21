#!/usr/bin/env bash
# Train and measure GLIDE ([glide] issue) in one GPU session of the `device` tool (an H100: 30 min of
# device time, at most 10 min per command). Each phase is one command; runs/ and out/ stay on the warm
# machine between commands, and what must come back is written to $OUT.
#
#   bash scripts/device_glide.sh time     # 30 steps of each recipe: images/s on this GPU (~2 min)
#   bash scripts/device_glide.sh base     # shapes_glide_gpu; resumable: repeat until it reports step 8000
#   bash scripts/device_glide.sh guides   # shapes_noisy_clip + shapes_classifier (resumable too)
#   bash scripts/device_glide.sh measure  # export fp16 folder + guides, ShapesEval, InpaintEval, the guidance
#                                         # sweep; printed, and back as 15 MiB parts of one tar in $OUT
# Back on the development machine:  cat FILES_AT/glide.tar.part-* | tar -x -C out   # out/glide, out/glide_results
#
# The device image already holds torch, numpy, pillow, safetensors and tqdm: t2i runs from the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
MINUTES=${MINUTES:-8}          # per training command: stop cleanly with a checkpoint before the 10 min limit
OUT=${OUT:-out/device}
DEVICE=${DEVICE:-cuda}
# A CPU smoke run of every phase (what tests/ cannot afford): DEVICE=cpu TRAIN_ARGS="--set train.steps=2
# --set train.batch_size=2 --set data.num_workers=0" SHAPES_ARGS="--steps 1 --n-per-prompt 1"
# INPAINT_ARGS="--steps 1 --n 2" SWEEP_ARGS="--limit 1 --n-per-prompt 1 --steps 1 --reference 50"
read -r -a TRAIN <<< "${TRAIN_ARGS:-}"
read -r -a SHAPES <<< "${SHAPES_ARGS:-}"
read -r -a INPAINT <<< "${INPAINT_ARGS:-}"
read -r -a SWEEP <<< "${SWEEP_ARGS:-}"
mkdir -p "$OUT" runs out
t2i() { "$PY" -m t2i.cli "$@"; }
last_metrics() { tail -n 1 "$1/metrics.jsonl"; }

case "${1:-}" in
  time)
    for recipe in shapes_glide_gpu shapes_noisy_clip shapes_classifier; do
      rm -rf "runs/time_$recipe"
      t2i train "$recipe" --out "runs/time_$recipe" --until-step 30 --set train.log_every=10 \
          --set train.sample_every=1000000 --set train.checkpoint_every=1000000 "${TRAIN[@]}"
      echo "$recipe: $(last_metrics "runs/time_$recipe")" | tee -a "$OUT/timing.txt"
    done
    nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$OUT/timing.txt"
    ;;
  base)
    t2i train shapes_glide_gpu --out runs/shapes_glide_gpu --resume --max-minutes "$MINUTES" "${TRAIN[@]}"
    last_metrics runs/shapes_glide_gpu | tee "$OUT/base_metrics.txt"
    cp "$(ls runs/shapes_glide_gpu/samples/*.png | tail -n 1)" "$OUT/" 2>/dev/null || true
    ;;
  guides)
    t2i train shapes_noisy_clip --out runs/shapes_noisy_clip --resume --max-minutes "$((MINUTES / 2))" "${TRAIN[@]}"
    t2i train shapes_classifier --out runs/shapes_classifier --resume --max-minutes "$((MINUTES / 2))" "${TRAIN[@]}"
    { last_metrics runs/shapes_noisy_clip; last_metrics runs/shapes_classifier; } | tee "$OUT/guide_metrics.txt"
    ;;
  measure)
    rm -rf out/glide out/glide_results && mkdir -p out/glide_results
    R=out/glide_results
    t2i convert runs/shapes_glide_gpu out/glide --to t2i --dtype float16
    t2i convert runs/shapes_noisy_clip out/glide/guide_clip --dtype float16
    t2i convert runs/shapes_classifier out/glide/guide_classifier --dtype float16
    cp runs/shapes_glide_gpu/metrics.jsonl "$R/base_metrics.jsonl"
    t2i eval shapes --model out/glide --device "$DEVICE" --json "$R/shapeseval.json" "${SHAPES[@]}"
    t2i eval inpaint --model out/glide --device "$DEVICE" --json "$R/inpaint.json" "${INPAINT[@]}"
    "$PY" benchmarks/glide_guidance.py --model out/glide --device "$DEVICE" --json "$R/guidance.json" "${SWEEP[@]}" \
        --plot "$R/guidance.png" | tee "$R/guidance.md"
    # at most 8 files of 16 MiB come back: one tar of weights and results, cut into 15 MiB parts
    tar -C out -cf - glide glide_results | split -b 15m - "$OUT/glide.tar.part-"
    du -sh out/glide out/glide/* && ls -la "$OUT"
    ;;
  *)
    sed -n '2,13p' "$0"; exit 2 ;;
esac
