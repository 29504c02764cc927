#!/usr/bin/env bash
# Every figure the README and the issues' closing notes quote, regenerated from the shipped tables.
#
#     experiments/figures.sh [OUT]        # default OUT: runs/figures; `make figures` runs it
#
# First the default drafter's exact traces (simulated rewards, about 15 minutes): headroom and the
# 3-seed agent sweep under each of its shipped profiles (measured CPU, flat model, H200 roofline).
# Then drafter v1's timed tables, replay only (about 20 minutes on 2 cores): headroom and noise, also over smaller
# block sets; the 3-seed agent sweep on the T=0 table; for each shipped test-only table (T=1, and
# T=0 measured on the AMD machine) the same agents trained on the T=0 table and evaluated on it,
# and cross-validated on its prompts; T=0 to T=1 on one machine; the online agents at equal
# sample budgets; a feature-set ablation on the validation split. LIVE=1 adds the measurements
# that decode for real (replay vs live for each T=0 table, environment speed): about 15 minutes.
# Nothing else may run meanwhile: the live timings would be skewed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/figures}
PY=${PY:-.venv/bin/python}
AGENTS=ppo,linucb,lints,egreedy,oracle,grid,fixed,random
TRACES=$($PY -c "from envs import DEFAULT_TRACES; print(DEFAULT_TRACES)")  # the default drafter's, every split
T0=smollm2-135m-block-t0          # drafter v1, Intel Xeon, every split
T1=smollm2-135m-block-t1          # AMD EPYC, test split only
T0_AMD=smollm2-135m-block-t0-amd  # AMD EPYC, test split only
TEST_ONLY="$T1 $T0_AMD"
export WANDB_MODE=${WANDB_MODE:-disabled}
mkdir -p "$OUT"
shipped() { [ -f "bp_rl/data/tables/$1.sqlite" ]; }

for table in $T0 $TEST_ONLY; do
  shipped $table || { echo "skipping $table: not shipped"; continue; }
  $PY experiments/table.py show $table > "$OUT/$table.all.md"
  $PY experiments/table.py show $table --split test > "$OUT/$table.test.md"
  for blocks in 1,2,3,4 1,4,8,16 2,4,8,16; do  # does a smaller action set leave more to win?
    $PY experiments/table.py show $table --split test --block-sizes ${blocks//,/ } > "$OUT/$table.test.b$blocks.md"
  done
done

sweep() {  # sweep NAME OVERRIDES...: a 3-seed multirun and its report (env=table unless the overrides say)
  local name=$1; shift
  rm -rf "$OUT/$name"
  $PY experiments/run.py -m env=table "$@" hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  $PY experiments/report.py "$OUT/$name" > /dev/null
  echo "$OUT/$name/report.md"
}

# The default drafter's traces under every shipped profile made for it (names from the traces' drafter).
for profile in $($PY experiments/table.py profiles $TRACES); do
  $PY experiments/table.py show $TRACES --split test --profile $profile > "$OUT/$TRACES.$profile.test.md"
  sweep agents-trace-$profile env=trace env.profile=$profile agent=$AGENTS seed=0,1,2
done

sweep agents-t0 agent=$AGENTS seed=0,1,2
for table in $TEST_ONLY; do  # no train split of their own: transfer from T=0, and 4-fold cross-validation
  shipped $table || continue
  tag=${table#smollm2-135m-block-}
  sweep agents-t0-on-$tag agent=$AGENTS seed=0,1,2 env.eval_table=$table
  sweep agents-$tag-cv agent=$AGENTS seed=0,1,2 env.table=$table env.folds=4
done
# temperature alone, on one CPU: trained at T=0 and evaluated at T=1, both tables from the AMD machine
if shipped $T0_AMD && shipped $T1; then
  sweep agents-t0-amd-on-t1-cv agent=$AGENTS seed=0,1,2 env.table=$T0_AMD env.folds=4 env.eval_table=$T1
fi
sweep budget-t0 agent=ppo,linucb,lints,egreedy budget=1000,4000,20000 seed=0,1,2  # sample efficiency
sweep features-val agent=oracle,ppo,lints seed=0,1,2 env.split=val \
  env.feature_set=last_hidden+logit_stats+prompt_length,last_hidden,mean_hidden,multi_layer,logit_stats+prompt_length

if [ "${LIVE:-0}" = 1 ]; then
  for table in $T0 $T0_AMD; do  # one table per CPU model: agreement on its own machine only
    $PY experiments/validate_replay.py --table $table --prompts 8 > "$OUT/validate_replay.$table.md"
  done
  $PY experiments/bench_env.py --live-steps 4 > "$OUT/bench_env.md"
fi
ls "$OUT"
