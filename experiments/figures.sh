#!/usr/bin/env bash
# Every figure the README and the issues' closing notes quote, regenerated from the shipped tables.
#
#     experiments/figures.sh [OUT]        # default OUT: runs/figures; `make figures` runs it
#
# Replay only (about ten minutes on 2 cores): the tables' headroom and noise; the 3-seed agent
# sweep on the T=0 table and, when the T=1 table is shipped, the same agents evaluated on it
# (trained at T=0, and cross-validated on the T=1 prompts); the online agents at equal sample
# budgets; a feature-set ablation on the validation split. LIVE=1 adds the measurements that
# decode for real (replay vs live, environment speed): tens of minutes. Nothing else may run
# meanwhile: the live timings would be skewed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/figures}
PY=${PY:-.venv/bin/python}
AGENTS=ppo,linucb,lints,egreedy,oracle,grid,fixed,random
T0=smollm2-135m-block-t0
T1=smollm2-135m-block-t1
export WANDB_MODE=${WANDB_MODE:-disabled}
mkdir -p "$OUT"
shipped() { [ -f "bp_rl/data/tables/$1.sqlite" ]; }

for table in $T0 $T1; do
  shipped $table || { echo "skipping $table: not shipped"; continue; }
  $PY experiments/table.py show $table > "$OUT/$table.all.md"
  $PY experiments/table.py show $table --split test > "$OUT/$table.test.md"
done

sweep() {  # sweep NAME OVERRIDES...: a 3-seed multirun and its report
  local name=$1; shift
  rm -rf "$OUT/$name"
  $PY experiments/run.py -m "$@" hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  $PY experiments/report.py "$OUT/$name" > /dev/null
  echo "$OUT/$name/report.md"
}
sweep agents-t0 agent=$AGENTS seed=0,1,2
if shipped $T1; then  # T=1 is measured on the test split only: transfer from T=0, and 4-fold cross-validation
  sweep agents-t0-on-t1 agent=$AGENTS seed=0,1,2 env.eval_table=$T1
  sweep agents-t1-cv agent=$AGENTS seed=0,1,2 env.table=$T1 env.folds=4
fi
sweep budget-t0 agent=ppo,linucb,lints,egreedy budget=1000,4000,20000 seed=0,1,2  # sample efficiency
sweep features-val agent=oracle,ppo,lints seed=0,1,2 env.split=val \
  env.feature_set=last_hidden+logit_stats+prompt_length,last_hidden,mean_hidden,multi_layer,logit_stats+prompt_length

if [ "${LIVE:-0}" = 1 ]; then
  $PY experiments/validate_replay.py --prompts 8 > "$OUT/validate_replay.md"
  $PY experiments/bench_env.py --live-steps 4 > "$OUT/bench_env.md"
fi
ls "$OUT"
