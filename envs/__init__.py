"""Gymnasium environments over the decoding core: choose a request's draft block size.

Registered ids:
- `bp_rl/BlockSize-v0`: replays the shipped measured table (`make_table_env`);
- `bp_rl/BlockSizeTrace-v0`: replays exact acceptance traces under a device profile (`make_trace_env`);
- `bp_rl/BlockSizeLive-v0`: decodes for real with timing (`make_live_env`; nondeterministic);
- `bp_rl/BlockSchedule-v0`: a decision per cycle on exact traces under a profile (`make_schedule_env`);
- `bp_rl/BlockScheduleLive-v0`: a decision per cycle, decoded for real (`make_live_schedule_env`).
"""

import gymnasium as gym

from envs.block_size import (
    DEFAULT_TABLE,
    DEFAULT_TRACES,
    BlockSizeEnv,
    make_live_env,
    make_table_env,
    make_trace_env,
    observation_stats,
    simulated_rewards,
)
from envs.block_schedule import BlockScheduleEnv, make_live_schedule_env, make_schedule_env

gym.register(id="bp_rl/BlockSize-v0", entry_point="envs.block_size:make_table_env")
gym.register(id="bp_rl/BlockSizeTrace-v0", entry_point="envs.block_size:make_trace_env")
gym.register(id="bp_rl/BlockSizeLive-v0", entry_point="envs.block_size:make_live_env", nondeterministic=True)
gym.register(id="bp_rl/BlockSchedule-v0", entry_point="envs.block_schedule:make_schedule_env")
gym.register(id="bp_rl/BlockScheduleLive-v0", entry_point="envs.block_schedule:make_live_schedule_env", nondeterministic=True)

__all__ = [
    "BlockScheduleEnv",
    "DEFAULT_TABLE",
    "DEFAULT_TRACES",
    "BlockSizeEnv",
    "make_live_env",
    "make_live_schedule_env",
    "make_schedule_env",
    "make_table_env",
    "make_trace_env",
    "observation_stats",
    "simulated_rewards",
]
