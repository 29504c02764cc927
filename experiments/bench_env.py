"""Environment speed: replay steps per second, and live seconds per step.

    python experiments/bench_env.py                       # the default traces, plus 4 live steps
    python experiments/bench_env.py --traces PATH --live-steps 0
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
from bp_rl.timing import device_name, machine_load_note
from envs import DEFAULT_TRACES, make_live_env, make_trace_env


def steps_per_second(env, steps: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    actions = rng.integers(env.action_space.n, size=steps)
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        env.reset()
        env.step(int(action))
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default=DEFAULT_TRACES)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--live-steps", type=int, default=4)
    args = parser.parse_args()

    print(f"{machine_load_note()}")
    bare = make_trace_env(args.traces, split="train", normalize_obs=True)
    print(f"replay (BlockSizeEnv, normalised obs): {steps_per_second(bare, args.steps):,.0f} steps/s")
    made = gym.make("bp_rl/BlockSizeTrace-v0", traces=args.traces, normalize_obs=True)
    print(f"replay (gym.make, with its checker wrappers): {steps_per_second(made, args.steps):,.0f} steps/s")
    if args.live_steps:
        live = make_live_env(split="test", max_prompts=args.live_steps)
        print(f"live on {device_name(live.backend.target.device)}:")
        for index in range(args.live_steps):
            start = time.perf_counter()
            live.reset(seed=index, options={"prompt_index": index})
            _, _, _, _, info = live.step(int(live.action_space.sample()))
            print(
                f"  step {index}: {time.perf_counter() - start:.2f} s wall (prefill + decode at block {info['block_size']} "
                f"+ this prompt's autoregressive baseline), decode {info['decode_seconds']:.2f} s"
            )


if __name__ == "__main__":
    main()
