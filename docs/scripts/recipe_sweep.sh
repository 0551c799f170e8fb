#!/usr/bin/env bash
# The recipe sweep: every training recipe of medsegdiff_small and flow_small on one dataset at one budget, the
# supervised nets beside them, each generative run sampled under one grid, one report per
# family (report/report.md: a row per run with the overrides that differ; report/evals.md:
# a row per run and sampling setting). Recipes are compared on the **val** split: the test
# split is for the settings chosen here, evaluated once (python -m segflow.compare).
#
#   bash docs/scripts/recipe_sweep.sh [overrides...]
#   PY=python JOBS=4 PARALLEL=0 SEEDS=0,1 FAMILIES="supervised medsegdiff flow" \
#       STEPS=1,2,4,10 SAMPLES=1,4 bash docs/scripts/recipe_sweep.sh data=synthetic_xca trainer=gpu
#
# JOBS: trainings at a time per family (joblib launcher); PARALLEL=1 runs the families'
# sweeps at the same time (a GPU with many CPU cores; on a small CPU keep 0); SEEDS: every
# recipe once per seed; FAMILIES: which of the three sweeps run.
# Outputs: $SEGFLOW_OUTPUT_DIR/multirun/recipe_{supervised,medsegdiff,flow}/<time>/.
set -euo pipefail
PY=${PY:-python}
JOBS=${JOBS:-2}
PARALLEL=${PARALLEL:-0}
STEPS=${STEPS:-1,2,4,10}
SAMPLES=${SAMPLES:-1,4}
SEEDS=${SEEDS:-0}
FAMILIES=${FAMILIES:-supervised medsegdiff flow}
root=${SEGFLOW_OUTPUT_DIR:-outputs}/multirun
common=(launcher=joblib "hydra.launcher.n_jobs=$JOBS" "seed=$SEEDS" "$@")

declare -A sweeps=(
  [supervised]="model=unet,csnet"
  # diffusion: what the network predicts x the segmentation losses on the predicted x0
  [medsegdiff]="model=medsegdiff_small model.method.prediction=eps,x0,v model.method.dice_weight=0,1 model.method.bce_weight=0,1"
  # flow matching: training on states built from the model's own estimate (recycling) or not
  [flow]="model=flow_small model.method.recycle=0,0.5"
)
pids=()
for family in $FAMILIES; do
  sweep="${sweeps[$family]} sweep_name=recipe_$family"
  # shellcheck disable=SC2086  # each sweep line is a list of overrides
  if [ "$PARALLEL" = 1 ]; then
    $PY -m segflow.train -m $sweep "${common[@]}" &
    pids+=($!)
  else
    $PY -m segflow.train -m $sweep "${common[@]}"
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

# Every finished generative job under one grid of sampling settings.
for family in $FAMILIES; do
  [ "$family" = supervised ] && continue
  newest=$(ls -d "$root/recipe_$family"/*/ | sort | tail -1)
  find "$newest" -mindepth 2 -maxdepth 2 -name metrics.json -printf "%h\n" | sort
done | xargs -P "$JOBS" -I{} $PY -m segflow.eval run_dir={} split=val "grid.steps=[$STEPS]" \
  "grid.n_samples=[$SAMPLES]" data.num_workers=0 save_images=false

for family in $FAMILIES; do
  $PY -m segflow.report "$(ls -d "$root/recipe_$family"/*/ | sort | tail -1)"
done
