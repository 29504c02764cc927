"""Weights & Biases tracking for one run: config, training curves, evaluation table, plots, the agent.

`logger.mode`: offline (default; nothing needs an account or a network, `wandb sync` uploads
later), online, or disabled (nothing is written). Runs of one sweep share a group.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

MODES = ("offline", "online", "disabled")


class Tracker:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        mode = cfg.logger.mode
        if mode not in MODES:
            raise ValueError(f"unknown logger.mode {mode!r}; valid: {list(MODES)}")
        self.run = None
        if mode == "disabled":
            return
        import wandb  # imported only when used: it is slow to import

        hydra_cfg = HydraConfig.get()
        sweep = hydra_cfg.mode == RunMode.MULTIRUN
        group = cfg.logger.group or Path(hydra_cfg.sweep.dir if sweep else run_dir).name
        self.run = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=group,
            name=run_dir.name,
            dir=str(run_dir),
            mode=mode,
            job_type="train",
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("val/*", step_metric="train/step")

    def finish(self, history: list[dict], summaries: dict[str, dict], plots: list[Path], agent_dir: Path, results: dict) -> None:
        if self.run is None:
            return
        import wandb

        for row in history:
            self.run.log({"train/step": row["step"], **{k: v for k, v in row.items() if k != "step"}})
        columns = ["agent", "category", "prompts", "tokens_per_second", "speedup", "mean_acceptance", "gap_closed", "regret"]
        table = wandb.Table(columns=columns)
        for name, summary in summaries.items():
            for category, metrics in [("all", summary), *summary["per_category"].items()]:
                table.add_data(name, category, *[metrics[c] for c in columns[2:]])
        self.run.log({"eval/table": table, **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
        metrics = results["metrics"]
        self.run.summary.update(
            {f"eval/{k}": metrics[k] for k in ("tokens_per_second", "speedup", "mean_acceptance", "gap_closed", "regret", "decision_ms")}
        )
        self.run.summary["train/seconds"] = results["train_seconds"]
        artifact = wandb.Artifact(f"agent-{results['agent']}-s{results['seed']}", type="agent")
        artifact.add_dir(str(agent_dir))
        self.run.log_artifact(artifact)
        self.run.finish()
