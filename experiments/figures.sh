#!/usr/bin/env bash
# Every figure the README's results quote, regenerated from the shipped data the environments default to (envs.DEFAULT_TRACES, DEFAULT_TABLE).
#
#     experiments/figures.sh [OUT]        # default OUT: runs/figures; `make figures` runs it
#     PARTS=timed experiments/figures.sh  # only some parts: traces, ablations, timed, t1, live
#
# traces: the exact T=0 traces (simulated rewards): headroom and the 3-seed agent sweep under each of
#   their shipped measured CPU profiles, the `flat` model of this machine's and the H200 roofline, about 3
#   minutes a profile on 2 cores.
# ablations: sample efficiency and feature sets, on the traces under this machine's measured profile (or the
#   closest shipped one), about 12 minutes.
# timed: the timed T=0 table (test split only, medians of its repeats): headroom and noise, also over smaller
#   block sets; the traces against it (exact replay, simulated vs timed); the agents cross-validated
#   on its prompts (about 9 minutes).
# t1: the timed T=1 table (test split): headroom and noise; the sampled T=1 traces against it (mean
#   acceptance, simulated vs timed); agents trained at T=0 on the traces, evaluated on it; agents
#   cross-validated on it.
# live (LIVE=1 adds it): what decodes for real, meaningful on the timed table's CPU model only:
#   replay vs live, environment speed, and the headline row (PPO, grid and fixed decoded live on 20
#   test prompts), about 10 minutes. Nothing else may run meanwhile: the timings would be skewed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/figures}
PARTS=${PARTS:-traces ablations timed t1}
if [ "${LIVE:-0}" = 1 ]; then PARTS="$PARTS live"; fi
PY=${PY:-.venv/bin/python}
AGENTS=ppo,linucb,lints,egreedy,oracle,grid,fixed,random
read -r TRACES TIMED < <($PY -c "from envs import DEFAULT_TABLE, DEFAULT_TRACES; print(DEFAULT_TRACES, DEFAULT_TABLE)")
# The newest timed T=1 data: drafter v6's test table and its sampled traces (40 test prompts, seed 0); v8's T=1 is not timed yet.
TIMED_T1=${TIMED_T1:-smollm2-135m-block-v6-t1-intel-f6m207}
TRACES_T1=${TRACES_T1:-smollm2-135m-block-v6-t1-test-40}
export WANDB_MODE=${WANDB_MODE:-disabled}
mkdir -p "$OUT"

sweep() {  # sweep NAME OVERRIDES...: a 3-seed multirun and its report
  local name=$1; shift
  rm -rf "$OUT/$name"
  $PY experiments/run.py -m "$@" hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  $PY experiments/report.py "$OUT/$name" > /dev/null
  echo "$OUT/$name/report.md"
}

traces() {  # the traces under every shipped measured profile of their drafter (this machine's first), and the
  # models: the roofline, and `flat` from this machine's profile only (a flat model of another CPU differs in level alone)
  local profiles profile measured
  profiles=$($PY experiments/table.py profiles $TRACES)
  measured=${profiles%%$'\n'*}  # the first: this machine's measured profile, as measured_profile says
  for profile in $profiles; do
    case $profile in flat-*) [ "$profile" = "flat-$measured" ] || continue ;; esac
    $PY experiments/table.py show $TRACES --split test --profile $profile > "$OUT/$TRACES.$profile.test.md"
    sweep agents-trace-$profile env=trace env.profile=$profile agent=$AGENTS seed=0,1,2
  done
}

measured_profile() {  # measured_profile [TIMED_TABLE]: the shipped measured profile of the traces' drafter
  # nearest this machine, or nearest the machine that timed TIMED_TABLE
  local profiles
  profiles=$($PY experiments/table.py profiles $TRACES ${1:+--near "$1"})
  echo "${profiles%%$'\n'*}"
}

ablations() {
  local profile
  profile=$(measured_profile)
  sweep budget-trace env=trace env.profile=$profile agent=ppo,linucb,lints,egreedy budget=1000,4000,20000 seed=0,1,2
  sweep features-val env=trace env.profile=$profile agent=oracle,ppo,lints seed=0,1,2 env.split=val \
    env.feature_set=last_hidden+logit_stats+prompt_length,last_hidden,mean_hidden,multi_layer,logit_stats+prompt_length
}

timed() {  # what timing resolves, and whether the traces reproduce it
  local blocks
  $PY experiments/table.py show $TIMED > "$OUT/$TIMED.md"
  for blocks in 1,2,3,4 1,4,8,16 2,4,8,16; do  # does a smaller action set leave more to win?
    $PY experiments/table.py show $TIMED --block-sizes ${blocks//,/ } > "$OUT/$TIMED.b$blocks.md"
  done
  $PY experiments/validate_traces.py --traces $TRACES --table $TIMED > "$OUT/validate_traces.$TIMED.md"
  sweep agents-timed-cv env=table env.table=$TIMED agent=$AGENTS seed=0,1,2  # test split only: 4-fold cross-validation
}

t1() {  # what sampling does to the prize, and whether policies learned at T=0 serve T=1
  local profile traces  # an eval table must be the training data's drafter's: train on the T=1 table's drafter's T=0 traces
  traces=$($PY -c "from bp_rl.rewards import RewardTable; print(RewardTable.load('$TIMED_T1').meta['drafter'] + '-traces')")
  profile=$(TRACES=$traces measured_profile $TIMED_T1)  # the T=1 table's CPU model prices the T=0 traces its agents train on
  $PY experiments/table.py show $TIMED_T1 > "$OUT/$TIMED_T1.md"
  $PY experiments/validate_traces.py --traces $TRACES_T1 --table $TIMED_T1 > "$OUT/validate_traces.$TIMED_T1.md"
  sweep agents-trace-t0-on-t1 env=trace env.traces=$traces env.profile=$profile env.eval_table=$TIMED_T1 agent=oracle,ppo,linucb,grid seed=0,1,2
  sweep agents-t1-cv env=table env.table=$TIMED_T1 agent=oracle,ppo,linucb,grid seed=0,1,2  # test split only: 4-fold cross-validation
}

live() {
  $PY experiments/validate_replay.py --table $TIMED --prompts 8 > "$OUT/validate_replay.$TIMED.md"
  $PY experiments/bench_env.py --live-steps 4 > "$OUT/bench_env.md"
  $PY experiments/run.py agent=ppo env=live env.max_prompts=20 hydra.run.dir="$OUT/live-ppo" > "$OUT/live-ppo.log" 2>&1
}

for part in $PARTS; do
  case $part in
    traces|ablations|timed|t1|live) $part ;;
    *) echo "unknown part '$part' in PARTS='$PARTS'; valid: traces ablations timed t1 live" >&2; exit 2 ;;
  esac
done
ls "$OUT"
