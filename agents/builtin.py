"""Importing this module registers every built-in agent."""

from agents import bandits, baselines, oracle, ppo  # noqa: F401
