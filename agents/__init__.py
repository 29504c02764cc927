"""Block-size policies behind one interface (`Agent`), a registry open to plug-ins, and one evaluation.

    from agents import make_agent, agent_names
    agent = make_agent("ppo", block_sizes, observation_dim, seed=0, learning_rate=1e-3)
"""

from agents.base import AGENTS, Agent, FitData, LabelledSet, Logger, agent_names, make_agent, register
from agents.evaluation import against_best_as_run, agent_policy, best_policy, run_policies, run_policy, summarise

# The built-ins register themselves on import; they import `agents.base`, which imports none of them.
from agents import bandits, baselines, oracle, ppo  # noqa: E402, F401  isort: skip

__all__ = [
    "AGENTS",
    "Agent",
    "FitData",
    "LabelledSet",
    "Logger",
    "against_best_as_run",
    "agent_names",
    "agent_policy",
    "best_policy",
    "make_agent",
    "register",
    "run_policies",
    "run_policy",
    "summarise",
]
