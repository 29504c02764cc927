"""Train a block drafter for a target, from the training split and offline text only.

    python experiments/train_drafter.py                         # all stages, resumable
    python experiments/train_drafter.py stage=train train.max_minutes=60
    python experiments/train_drafter.py stage=export

Stages, each cached under `work_dir` and resumed where it stopped:
1. data: the target's own generations (greedy and sampled) on the suite's *training* prompts,
   greedy generations on a few *validation* prompts (monitoring only, never trained on), and
   chunks of offline text (Python's stdlib source, minus every file a val/test prompt came from);
2. features: the target's hidden states at the drafter's layers for every sequence (fp16 shards);
3. train: the DFlash objective (bp_rl.drafter_training) with a frozen target, checkpointed;
   acceptance at block 16 on validation prompts is measured along the way (the learning curve);
4. export: fp16 safetensors + config + model card, loadable with `load_drafter`.
"""

from __future__ import annotations

import json
import math
import os
import random
import sysconfig
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bp_rl import BlockDrafter, Target, load_drafter, load_target, speculative_generate
from bp_rl.block_drafter import spread_layer_ids
from bp_rl.drafter_training import block_loss, sample_blocks
from bp_rl.prompts import load_prompts, render_prompt
from bp_rl.timing import device_name

STAGES = ("data", "features", "train", "export")
SEQUENCE_SETS = ("generated", "val", "text")  # "val" is for monitoring only


# --- 1. data ---------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace `path` with `rows`, atomically (temporary file, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def clean_torn_tail(path: Path) -> None:
    """Drop a partial last line (a crash mid-write) so appends start on a fresh line."""
    if path.exists() and not path.read_text().endswith("\n"):
        write_jsonl(path, read_jsonl(path))


def generate_sequences(cfg: DictConfig, target: Target, prompts, temperature: float, out: Path) -> None:
    """Batched target generations for `prompts` at `temperature`, appended to `out` batch by batch."""
    clean_torn_tail(out)
    done = {r["id"] for r in read_jsonl(out)}
    tag = f"t{temperature:g}"
    tok = target.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else target.eos_token_ids[0]
    todo = [(p, target.encode(render_prompt(p, tok)).tolist()) for p in prompts if f"{p.id}@{tag}" not in done]
    todo.sort(key=lambda item: len(item[1]))  # similar lengths per batch: little padding
    size = cfg.data.gen_batch_size
    for start in tqdm(range(0, len(todo), size), desc=f"generate {out.stem} T={temperature:g}", unit="batch"):
        batch, encoded = zip(*todo[start : start + size])
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=target.device)  # left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=target.device)
        torch.manual_seed(cfg.train.seed + start)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
        with torch.inference_mode():
            out_ids = target.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=cfg.data.gen_max_new_tokens, pad_token_id=pad, **sampling
            )
        rows = []
        for prompt, prompt_ids, full in zip(batch, encoded, out_ids.tolist()):
            response = full[width:]
            stops = [i for i, t in enumerate(response) if t in target.eos_token_ids]
            response = response[: stops[0] + 1] if stops else response
            tokens = (prompt_ids + response)[-cfg.data.seq_len :]
            rows.append({"id": f"{prompt.id}@{tag}", "tokens": tokens, "loss_start": len(tokens) - len(response)})
        append_jsonl(out, rows)


def text_files_allowed(suite: str) -> list[Path]:
    """Stdlib source files, minus tests and every file that a val/test prose prompt was cut from."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    held_out = {p.source.rsplit(", ", 1)[1] for p in load_prompts(suite, category="prose") if p.split != "train"}
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if rel in held_out or any(part in rel for part in ("test", "site-packages", "idlelib", "lib2to3")):
            continue
        files.append(path)
    return files


def text_sequences(cfg: DictConfig, target: Target, out: Path) -> None:
    if out.exists():
        return  # written atomically in one go, so it is either complete or absent
    files = text_files_allowed(cfg.data.suite)
    random.Random(cfg.train.seed).shuffle(files)
    stream: list[int] = []
    rows = []
    eos = target.eos_token_ids[:1]
    wanted = math.ceil(cfg.data.text_tokens / cfg.data.seq_len)
    for path in tqdm(files, desc="tokenise offline text", unit="file"):
        stream += target.tokenizer(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"] + eos
        while len(stream) >= cfg.data.seq_len and len(rows) < wanted:
            rows.append({"id": f"text/{len(rows)}", "tokens": stream[: cfg.data.seq_len], "loss_start": 1})
            stream = stream[cfg.data.seq_len :]
        if len(rows) == wanted:
            break
    write_jsonl(out, rows)


def build_data(cfg: DictConfig, target: Target, work: Path) -> None:
    seq_dir = work / "sequences"
    seq_dir.mkdir(parents=True, exist_ok=True)
    train_prompts = load_prompts(cfg.data.suite, split="train")[: cfg.data.max_train_prompts]
    for temperature in cfg.data.gen_temperatures:
        generate_sequences(cfg, target, train_prompts, float(temperature), seq_dir / "generated.jsonl")
    val_prompts = load_prompts(cfg.data.suite, split="val")
    val_prompts = val_prompts[:: max(1, len(val_prompts) // cfg.data.val_prompts)][: cfg.data.val_prompts]  # all categories
    generate_sequences(cfg, target, val_prompts, 0.0, seq_dir / "val.jsonl")
    text_sequences(cfg, target, seq_dir / "text.jsonl")
    for name in SEQUENCE_SETS:
        rows = read_jsonl(seq_dir / f"{name}.jsonl")
        print(f"{name}: {len(rows)} sequences, {sum(len(r['tokens']) for r in rows)} tokens")


# --- 2. features -----------------------------------------------------------------------------------


def feature_layer_ids(cfg: DictConfig, target: Target) -> list[int]:
    return spread_layer_ids(target.num_layers, cfg.features.num_target_layers)


def complete_shards(feature_dir: Path, name: str) -> list[dict]:
    metas = sorted(feature_dir.glob(f"{name}-*.json"))
    return [json.loads(m.read_text()) | {"stem": m.stem} for m in metas]


def build_features(cfg: DictConfig, target: Target, work: Path) -> None:
    feature_dir = work / "features"
    feature_dir.mkdir(parents=True, exist_ok=True)
    layer_ids = feature_layer_ids(cfg, target)
    for name in SEQUENCE_SETS:
        rows = read_jsonl(work / "sequences" / f"{name}.jsonl")
        shards = complete_shards(feature_dir, name)
        start = shards[-1]["end"] if shards else 0
        with tqdm(total=sum(len(r["tokens"]) for r in rows[start:]), desc=f"features {name}", unit="tok", unit_scale=True) as bar:
            while start < len(rows):
                end, tokens = start, 0
                while end < len(rows) and tokens < cfg.features.shard_tokens:
                    tokens += len(rows[end]["tokens"])
                    end += 1
                write_shard(cfg, target, rows[start:end], layer_ids, feature_dir / f"{name}-{len(shards):05d}", start, end)
                shards.append({"end": end})
                bar.update(tokens)
                start = end


def write_shard(cfg, target: Target, rows: list[dict], layer_ids: list[int], stem: Path, start: int, end: int) -> None:
    """Target states for `rows`, concatenated; the .json meta is written last and marks completion."""
    features: list[np.ndarray | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["tokens"]))
    for b in range(0, len(order), cfg.features.batch_size):
        idx = order[b : b + cfg.features.batch_size]
        width = max(len(rows[i]["tokens"]) for i in idx)
        ids = torch.tensor([rows[i]["tokens"] + [0] * (width - len(rows[i]["tokens"])) for i in idx], device=target.device)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(rows[i]["tokens"]) for i in idx])[:, None]).to(target.device)
        with torch.inference_mode():
            out = target.model.base_model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        states = torch.cat([out.hidden_states[layer + 1] for layer in layer_ids], dim=-1)
        for j, i in enumerate(idx):
            features[i] = states[j, : len(rows[i]["tokens"])].to(torch.float16).cpu().numpy()
    offsets = np.cumsum([0] + [len(r["tokens"]) for r in rows])
    np.save(f"{stem}.features.tmp.npy", np.concatenate(features))
    np.save(f"{stem}.tokens.tmp.npy", np.concatenate([np.asarray(r["tokens"], dtype=np.int32) for r in rows]))
    os.replace(f"{stem}.features.tmp.npy", f"{stem}.features.npy")
    os.replace(f"{stem}.tokens.tmp.npy", f"{stem}.tokens.npy")
    meta = {"start": start, "end": end, "layer_ids": layer_ids, "offsets": offsets.tolist(), "loss_starts": [r["loss_start"] for r in rows]}
    Path(f"{stem}.json.tmp").write_text(json.dumps(meta))
    os.replace(f"{stem}.json.tmp", f"{stem}.json")


class SequencePool:
    """All feature shards of one sequence set, memory-mapped; yields (tokens, features, loss_start)."""

    def __init__(self, feature_dir: Path, name: str, layer_ids: list[int]):
        self.items = []
        for meta in complete_shards(feature_dir, name):
            if meta["layer_ids"] != layer_ids:
                raise ValueError(f"feature shard {meta['stem']} was built for layers {meta['layer_ids']}, not {layer_ids}")
            feats = np.load(feature_dir / f"{meta['stem']}.features.npy", mmap_mode="r")
            toks = np.load(feature_dir / f"{meta['stem']}.tokens.npy", mmap_mode="r")
            offs = meta["offsets"]
            for k, loss_start in enumerate(meta["loss_starts"]):
                if offs[k + 1] - offs[k] - loss_start >= 1:  # at least one label
                    self.items.append((toks, feats, offs[k], offs[k + 1], loss_start))
        self.tokens = sum(e - s for _, _, s, e, _ in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int, device: torch.device):
        toks, feats, s, e, loss_start = self.items[i]
        return torch.from_numpy(np.asarray(toks[s:e], dtype=np.int64)), torch.from_numpy(np.asarray(feats[s:e], dtype=np.float32)).to(device), loss_start


# --- 3. train --------------------------------------------------------------------------------------


def init_from_target_layers(drafter: BlockDrafter, target: Target) -> None:
    """Copy the target's top decoder layers (and final norm) into the drafter's layers, by name."""
    base = target.model.base_model
    layers = base.layers
    top = layers[len(layers) - len(drafter.layers) :]
    for mine, theirs in zip(drafter.layers, top):
        missing, unexpected = mine.load_state_dict(theirs.state_dict(), strict=False)
        if unexpected or any("norm" not in k for k in missing):
            raise ValueError(f"target layer does not match the drafter layer: missing {missing}, unexpected {unexpected}")
    drafter.norm.load_state_dict(base.norm.state_dict())


def lr_at(step: int, cfg: DictConfig) -> float:
    if step < cfg.train.warmup_steps:
        return cfg.train.lr * (step + 1) / cfg.train.warmup_steps
    progress = (step - cfg.train.warmup_steps) / max(1, cfg.train.steps - cfg.train.warmup_steps)
    return cfg.train.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluate(drafter: BlockDrafter, target: Target, cfg: DictConfig, val_pool: SequencePool) -> dict:
    """Validation loss on val generations and real acceptance at block 16 on val prompts."""
    generator = torch.Generator().manual_seed(1234)
    weight = target.model.get_output_embeddings().weight
    embedding = target.model.get_input_embeddings().weight
    metrics = []
    with torch.no_grad():
        for i in range(len(val_pool)):
            tokens, feats, loss_start = val_pool.get(i, target.device)
            batch = sample_blocks(tokens, loss_start, cfg.train.blocks_per_seq, cfg.train.block_size, drafter.mask_token_id, generator, decay=cfg.train.loss_decay)
            metrics.append(block_loss(drafter, embedding, weight, feats, batch)[1])
    result = {f"val_{k}": float(np.nanmean([m[k] for m in metrics])) for k in ("loss", "ce", "acc", "acc_first")}
    copy = BlockDrafter(drafter.config)
    copy.load_state_dict(drafter.state_dict())
    copy.bind(target)
    prompts = load_prompts(cfg.data.suite, split="val")[: cfg.train.eval_prompts]
    lengths = []
    for prompt in prompts:
        out = speculative_generate(target, copy, render_prompt(prompt, target.tokenizer), drafter.max_block_size, max_new_tokens=cfg.train.eval_new_tokens)
        lengths += out.stats.acceptance_lengths
    result[f"val_acceptance_b{drafter.max_block_size}"] = sum(lengths) / len(lengths)
    return result


def train(cfg: DictConfig, target: Target, work: Path) -> None:
    if cfg.train.block_size > cfg.drafter.block_size:
        raise ValueError(f"train.block_size ({cfg.train.block_size}) exceeds drafter.block_size ({cfg.drafter.block_size})")
    layer_ids = feature_layer_ids(cfg, target)
    feature_dir = work / "features"
    pools = {name: SequencePool(feature_dir, name, layer_ids) for name in SEQUENCE_SETS}
    if not len(pools["generated"]) and not len(pools["text"]):
        raise RuntimeError(f"no training features under {feature_dir}: run stage=data and stage=features first")
    print({name: f"{len(p)} sequences / {p.tokens} tokens" for name, p in pools.items()})

    drafter = BlockDrafter.for_target(
        target, num_layers=cfg.drafter.num_layers, block_size=cfg.drafter.block_size, target_layer_ids=layer_ids, seed=cfg.train.seed
    ).float()
    if cfg.drafter.init_from:
        warm = load_drafter(cfg.drafter.init_from, target)
        if warm.target_layer_ids != drafter.target_layer_ids or len(warm.layers) != len(drafter.layers):
            raise ValueError(f"drafter.init_from {cfg.drafter.init_from!r} has another shape than drafter.* asks for")
        drafter.load_state_dict(warm.state_dict())
    elif cfg.drafter.init_from_target:
        init_from_target_layers(drafter, target)
    for p in target.model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    state = {"step": 0, "label_tokens": 0, "seconds": 0.0}
    checkpoint, log = work / "checkpoint.pt", work / "train_log.jsonl"
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location=target.device, weights_only=False)
        drafter.load_state_dict(saved["drafter"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        print(f"resumed from {checkpoint} at step {state['step']}")
        # steps logged after the checkpoint are redone: drop them so the log has each step once
        write_jsonl(log, [r for r in read_jsonl(log) if r["step"] <= state["step"]])
    elif log.exists():  # a fresh run: keep the old log aside, never lose it
        log.rename(work / f"train_log.before-{int(time.time())}.jsonl")
    state.setdefault("device", device_name(target.device))
    rng = random.Random(cfg.train.seed + state["step"])
    generator = torch.Generator().manual_seed(cfg.train.seed + state["step"])
    weight = target.model.get_output_embeddings().weight
    embedding = target.model.get_input_embeddings().weight
    deadline = time.monotonic() + 60 * cfg.train.max_minutes if cfg.train.max_minutes else math.inf

    def save() -> None:
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"drafter": drafter.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                    "torch_rng": torch.get_rng_state(), "config": OmegaConf.to_container(cfg)}, tmp)
        tmp.replace(checkpoint)

    bar = tqdm(total=cfg.train.steps, initial=state["step"], desc="train drafter", unit="step")
    drafter.train()
    while state["step"] < cfg.train.steps and time.monotonic() < deadline:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], cfg)
        optimizer.zero_grad(set_to_none=True)
        step_metrics = []
        for _ in range(cfg.train.seqs_per_step):
            use_generated = len(pools["generated"]) and (not len(pools["text"]) or rng.random() < cfg.train.generated_fraction)
            pool = pools["generated"] if use_generated else pools["text"]
            tokens, feats, loss_start = pool.get(rng.randrange(len(pool)), target.device)
            batch = sample_blocks(tokens, loss_start, cfg.train.blocks_per_seq, cfg.train.block_size, drafter.mask_token_id,
                                  generator, min_block=cfg.train.min_block, decay=cfg.train.loss_decay)
            loss, metrics = block_loss(drafter, embedding, weight, feats, batch)
            (loss / cfg.train.seqs_per_step).backward()
            step_metrics.append(metrics)
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), cfg.train.grad_clip)
        optimizer.step()
        labels = sum(m["labels"] for m in step_metrics)
        state["step"] += 1
        state["label_tokens"] += labels
        state["seconds"] += time.perf_counter() - started
        loss_now = float(np.mean([m["loss"] for m in step_metrics]))
        bar.set_postfix(loss=f"{loss_now:.3f}", acc1=f"{np.nanmean([m['acc_first'] for m in step_metrics]):.2f}",
                        tok_s=f"{labels / (time.perf_counter() - started):.0f}")
        bar.update()
        record = {"step": state["step"], "label_tokens": state["label_tokens"], "seconds": round(state["seconds"], 1), "lr": lr_at(state["step"] - 1, cfg),
                  "loss": loss_now, "acc": float(np.mean([m["acc"] for m in step_metrics]))}
        if state["step"] % cfg.train.eval_every == 0 or state["step"] == cfg.train.steps:
            drafter.eval()
            record |= evaluate(drafter, target, cfg, pools["val"])
            drafter.train()
            tqdm.write(json.dumps(record))
        if state["step"] % cfg.train.checkpoint_every == 0 or "val_loss" in record:
            save()
        append_jsonl(log, [record])
    save()
    bar.close()


# --- 4. export -------------------------------------------------------------------------------------


def export(cfg: DictConfig, target: Target, work: Path) -> None:
    checkpoint = work / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: run stage=train first")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    drafter = BlockDrafter.for_target(target, num_layers=cfg.drafter.num_layers, block_size=cfg.drafter.block_size,
                                      target_layer_ids=feature_layer_ids(cfg, target))
    drafter.load_state_dict(saved["drafter"])
    path = drafter.save(hydra.utils.to_absolute_path(cfg.export.path))
    log = read_jsonl(work / "train_log.jsonl")
    evals = [r for r in log if "val_loss" in r]
    data = {name: read_jsonl(work / "sequences" / f"{name}.jsonl") for name in SEQUENCE_SETS}
    card = render_model_card(cfg, target, drafter, saved["state"], evals, data)
    (path / "README.md").write_text(card)
    print(f"exported to {path}")


def render_model_card(cfg, target, drafter, state, evals, data) -> str:
    params = sum(p.numel() for p in drafter.parameters())
    curve = "\n".join(
        f"| {r['step']} | {r['label_tokens']:,} | {r['val_loss']:.3f} | {r['val_acc_first']:.3f} | {r[f'val_acceptance_b{drafter.max_block_size}']:.2f} |"
        for r in evals
    )
    tokens = {name: sum(len(r["tokens"]) for r in rows) for name, rows in data.items()}
    return f"""# {Path(cfg.export.path).name}: block drafter for `{target.name}`

Architecture: DFlash-style block drafter (`bp_rl.BlockDrafter`), {drafter.config.num_hidden_layers} Qwen3-style layers,
hidden {drafter.config.hidden_size}, {params / 1e6:.1f}M parameters (fp16), reading target layers
{list(drafter.target_layer_ids)}, block size up to {drafter.max_block_size}, mask token {drafter.mask_token_id};
embedding and LM head are the target's own. Initialised from: {cfg.drafter.init_from or ("the target's top layers" if cfg.drafter.init_from_target else "random")}.

Data (training split of prompt suite `{cfg.data.suite}` and offline text only):
- target generations on training prompts at temperatures {list(cfg.data.gen_temperatures)}: {len(data['generated'])} sequences, {tokens['generated']:,} tokens;
- Python standard library source (files behind val/test prompts excluded): {len(data['text'])} sequences, {tokens['text']:,} tokens;
- monitoring only: greedy generations on {len(data['val'])} validation prompts.

Training: {state['step']} steps, {state['label_tokens']:,} labelled block positions, {state['seconds'] / 60:.1f} min of training
on {state.get('device', 'unknown device')}; AdamW lr {cfg.train.lr}, {cfg.train.seqs_per_step} sequences x {cfg.train.blocks_per_seq} blocks per step,
random block sizes {cfg.train.min_block}-{cfg.train.block_size}, loss weight exp(-(p-1)/{cfg.train.loss_decay}).

Learning curve (loss and accuracy on the validation generations; acceptance = tokens per verify pass at
block {drafter.max_block_size}, greedy, on the first {cfg.train.eval_prompts} validation-split prompts of the suite file):

| step | labelled tokens | val loss | val first-position accuracy | val acceptance |
|---:|---:|---:|---:|---:|
{curve}

Reproduce: `python experiments/train_drafter.py` (see `experiments/conf/train_drafter.yaml`).
"""


@hydra.main(config_path="conf", config_name="train_drafter", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.stage not in (*STAGES, "all"):
        raise ValueError(f"unknown stage {cfg.stage!r}; valid: {[*STAGES, 'all']}")
    stages = STAGES if cfg.stage == "all" else (cfg.stage,)
    work = Path(hydra.utils.to_absolute_path(cfg.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    target = load_target(cfg.target, device=cfg.device)
    for stage in stages:
        {"data": build_data, "features": build_features, "train": train, "export": export}[stage](cfg, target, work)


if __name__ == "__main__":
    main()
