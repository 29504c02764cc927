"""The `Agent` interface, what `fit` is given, and the registry (built-ins plus plug-ins).

An agent maps an observation (the prefill features `BlockSizeEnv` returns) to an action (an
index into `block_sizes`). It learns in `fit` from the training split only: online agents
(bandits, PPO) interact with `FitData.env` within `FitData.budget` episodes; table-trained
agents (grid, oracle) read `FitData.train` / `FitData.val`, every prompt's measured reward
for every action.

Third-party agents register through the entry-point group `bp_rl.agents`:

    [project.entry-points."bp_rl.agents"]
    my_agent = "my_pkg:MyAgent"

and are then usable as `agent=my_agent`.
"""

from __future__ import annotations

import difflib
import inspect
import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bp_rl.outcomes import TableView

ENTRY_POINT_GROUP = "bp_rl.agents"


class Logger:
    """Where agents send training curves; this one keeps them in memory (`history`)."""

    def __init__(self):
        self.history: list[dict[str, Any]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.history.append({"step": step, **metrics})


@dataclass
class LabelledSet:
    """A split's prompts with every action's measured reward (from a table, median of repeats)."""

    observations: np.ndarray  # (N, d), as the environment returns them (normalised if it normalises)
    rewards: np.ndarray  # (N, K)
    categories: np.ndarray  # (N,)

    @classmethod
    def from_view(cls, view: TableView, reward: str, normalise=None) -> "LabelledSet":
        observations = view.observations if normalise is None else np.stack([normalise(o) for o in view.observations])
        return cls(observations.astype(np.float32), view.rewards(reward), view.categories)

    def mean_reward(self, actions: np.ndarray) -> float:
        """Mean measured reward of taking `actions[i]` on prompt i (exact, from the table)."""
        return float(self.rewards[np.arange(len(actions)), actions].mean())


@dataclass
class FitData:
    """Everything `fit` may use; all of it comes from the training split (val: for early stopping)."""

    env: Any  # BlockSizeEnv over the training split
    budget: int  # episodes an online agent may spend in `env`
    seed: int = 0
    logger: Logger = field(default_factory=Logger)
    train: LabelledSet | None = None  # None when no table backs the environment (live)
    val: LabelledSet | None = None
    val_env: Any = None  # BlockSizeEnv over the validation split, for online agents' evaluation


class Agent(ABC):
    """Choose a block-size index from an observation. Subclasses take their settings as keyword arguments."""

    name: ClassVar[str] = ""

    def __init__(self, block_sizes: tuple[int, ...], observation_dim: int, seed: int = 0):
        self.block_sizes = tuple(block_sizes)
        self.observation_dim = observation_dim
        self.seed = seed

    @property
    def num_actions(self) -> int:
        return len(self.block_sizes)

    @abstractmethod
    def fit(self, data: FitData) -> None:
        """Learn from the training split."""

    @abstractmethod
    def act(self, observation: np.ndarray, deterministic: bool = True) -> int:
        """The action (index into `block_sizes`) for one observation."""

    def config(self) -> dict[str, Any]:
        """The settings this agent was built with (saved next to its state)."""
        return {name: getattr(self, name) for name in settings_of(type(self))}

    def state(self) -> dict[str, Any]:
        """What `fit` learned, as tensors/arrays/numbers (saved with torch.save)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        header = {"agent": self.name, "block_sizes": list(self.block_sizes), "observation_dim": self.observation_dim, "seed": self.seed, "config": self.config()}
        (path / "agent.json").write_text(json.dumps(header, indent=2))
        torch.save(self.state(), path / "state.pt")
        return path

    @classmethod
    def load(cls, path: str | Path, block_sizes: tuple[int, ...] | None = None, observation_dim: int | None = None) -> "Agent":
        """Load a saved agent; `block_sizes` / `observation_dim`, if given, must match what it was trained for."""
        path = Path(path)
        if not (path / "agent.json").is_file():
            raise FileNotFoundError(f"no saved agent in {path} (expected agent.json and state.pt)")
        header = json.loads((path / "agent.json").read_text())
        if block_sizes is not None and list(block_sizes) != header["block_sizes"]:
            raise ValueError(f"agent in {path} was trained for block sizes {header['block_sizes']}, not {list(block_sizes)}")
        if observation_dim is not None and observation_dim != header["observation_dim"]:
            raise ValueError(f"agent in {path} was trained on {header['observation_dim']}-dim observations, not {observation_dim}")
        agent = make_agent(header["agent"], tuple(header["block_sizes"]), header["observation_dim"], header["seed"], **header["config"])
        agent.set_state(torch.load(path / "state.pt", weights_only=False))
        return agent


# ---- registry ------------------------------------------------------------------------------
AGENTS: dict[str, type[Agent]] = {}


def register(name: str):
    """Class decorator: make an agent available by `name`."""

    def add(cls: type[Agent]) -> type[Agent]:
        if name in AGENTS and AGENTS[name] is not cls:
            raise ValueError(f"agent name {name!r} is already registered by {AGENTS[name].__module__}")
        cls.name = name
        AGENTS[name] = cls
        return cls

    return add


def _load_plugins() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in AGENTS:
            continue
        package = entry.dist.name if entry.dist is not None else entry.value
        try:
            cls = entry.load()
        except Exception as err:
            raise RuntimeError(f"agent plug-in {entry.name!r} from package {package!r} failed to load: {err!r}") from err
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise RuntimeError(f"agent plug-in {entry.name!r} from package {package!r} is {cls!r}, not an Agent subclass")
        register(entry.name)(cls)


def agent_names() -> list[str]:
    _load_plugins()
    return sorted(AGENTS)


def agent_class(name: str) -> type[Agent]:
    names = agent_names()
    if name not in AGENTS:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown agent {name!r}; known agents: {names}{hint}")
    return AGENTS[name]


_CORE_ARGS = ("block_sizes", "observation_dim", "seed")  # every agent's positional arguments, not settings


def settings_of(cls: type[Agent]) -> dict[str, inspect.Parameter]:
    """The keyword settings of an agent class (with defaults and annotations): the named `__init__`
    parameters along its bases, so a subclass may add its own and pass the rest on with `**kwargs`."""
    settings: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is Agent or not issubclass(klass, Agent):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            named = parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            if named and parameter.name not in ("self", *_CORE_ARGS):
                settings.setdefault(parameter.name, parameter)
    return settings


def _check_type(agent: str, setting: inspect.Parameter, value: Any) -> None:
    """A setting must have its default's kind (an int is fine for a float); None only where annotated optional."""
    name, default = setting.name, setting.default
    if value is None and (default is None or "None" in str(setting.annotation)):
        return
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (list, tuple), list: (list, tuple)}
    allowed = kinds.get(type(default))
    wrong_bool = isinstance(value, bool) and type(default) is not bool
    if allowed is not None and (wrong_bool or not isinstance(value, allowed)):
        raise ValueError(f"agent {agent!r} setting {name} must be a {type(default).__name__} (default {default!r}), got {value!r}")


def make_agent(name: str, block_sizes: tuple[int, ...], observation_dim: int, seed: int = 0, **config) -> Agent:
    """Build agent `name`; a setting it does not take is an error listing the ones it does."""
    cls = agent_class(name)
    accepted = settings_of(cls)
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"agent {name!r} does not accept {unknown}; its settings are {list(accepted)}")
    for key, value in config.items():
        _check_type(name, accepted[key], value)
    return cls(block_sizes, observation_dim, seed, **config)


def seed_everything(seed: int) -> None:
    """One seeding helper for every agent: Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
