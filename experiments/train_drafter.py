"""Train a block drafter for a target on the target's own continuations (training split and offline text only).

    python experiments/train_drafter.py                         # all stages, resumable
    python experiments/train_drafter.py stage=regenerate data.max_minutes=60
    python experiments/train_drafter.py stage=train train.max_minutes=60
    python experiments/train_drafter.py stage=train train.name=kl0 train.kl_weight=0   # an ablation on the same data
    python experiments/train_drafter.py stage=export

Stages, each cached under `work_dir` and resumed where it stopped (training runs under
`work_dir/train/<train.name>`, so several recipes or ablations share one set of data):
1. prompts: the regeneration manifests (bp_rl.drafter_data builds the sources; nothing val/test);
2. regenerate: the target's greedy or sampled continuations, with its hidden states at the
   drafter's layers and top-k logits from the same passes (sharded, resumable);
3. train: the DFlash objective (bp_rl.drafter_training) with a frozen target over a reduced draft
   vocabulary, CE + KL against the target's top-k, checkpointed with the optimiser state; acceptance
   at block 16 replayed on the val continuations along the way (exact at T=0), confirmed by real decoding;
4. export: fp16 safetensors + config + model card, loadable with `load_drafter`.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sysconfig
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from build_prompts import math_prompts  # the suite's own generator of arithmetic and word problems
from bp_rl import BlockDrafter, Target, load_drafter, load_target, speculative_generate
from bp_rl.block_drafter import spread_layer_ids
from bp_rl.drafter_training import DraftVocabulary, block_loss, sample_blocks, warm_start
from bp_rl.drafter_data import (
    RegenPrompt, SequencePool, complete_shards, deduplicate, draft_vocabulary, offline_code_prompts, offline_doc_prompts, offline_prose_prompts,
    read_continuations, read_prompt_list, regenerate, self_written_code_problems, self_written_user_turns, write_continuations,
    write_prompt_list,
)
from bp_rl.prompts import chat_prompt, load_prompts, render_prompt
from bp_rl.traces import estimated_acceptance
from bp_rl.timing import device_name

STAGES = ("prompts", "regenerate", "train", "export")
ROUND_ID = re.compile(r"r\d+/")  # the id prefix of rows a later data.round appended


# --- logs ----------------------------------------------------------------------------------------


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


# --- 1. prompts ------------------------------------------------------------------------------------


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


def source_of(prompt_id: str) -> str:
    """A manifest row's source ("suite", "self", "code", ...), whichever round appended it."""
    return prompt_id.split("/")[1 if ROUND_ID.match(prompt_id) else 0]


def extra_prompts(cfg: DictConfig, target: Target, files: list[Path], seed: int, id_prefix: str = "") -> list[RegenPrompt]:
    """Prompts beyond the suite: user turns and code problems the target writes itself, continuation
    prompts cut from stdlib files, fresh math problems; a share marked for sampling; shuffled so a run cut short still
    covers every source. `seed` picks them, so a later round (another seed) adds new ones."""
    rng = random.Random(seed)
    tok = target.tokenizer
    extra: list[RegenPrompt] = []
    for i, text in enumerate(self_written_user_turns(target, cfg.data.user_turns, seed, batch_size=cfg.data.gen_batch_size)):
        extra.append(RegenPrompt(f"{id_prefix}self/{i}", text, target.encode(chat_prompt(text, tok)).tolist(), "written by the target"))
    for i, (text, source) in enumerate(offline_code_prompts(files, cfg.data.code_prompts, rng)):
        extra.append(RegenPrompt(f"{id_prefix}code/{i}", text, target.encode(text).tolist(), f"stdlib {source}"))
    for i, (text, source) in enumerate(offline_prose_prompts(files, cfg.data.prose_prompts, rng, cut=cfg.data.prose_cut)):
        extra.append(RegenPrompt(f"{id_prefix}prose/{i}", text, target.encode(text).tolist(), f"stdlib {source}"))
    fresh_math = [q for _ in range(math.ceil(cfg.data.math_prompts / 160)) for q in math_prompts(rng)][: cfg.data.math_prompts]
    for i, q in enumerate(fresh_math):  # the suite's own generator, new numbers (val/test texts are dropped by the caller)
        extra.append(RegenPrompt(f"{id_prefix}math/{i}", q.text, target.encode(chat_prompt(q.text, tok)).tolist(), q.source))
    if cfg.data.doc_prompts:  # only when asked: drawing from rng would change the manifest an earlier run built
        for i, (text, source) in enumerate(offline_doc_prompts(cfg.data.doc_prompts, rng)):
            extra.append(RegenPrompt(f"{id_prefix}docs/{i}", text, target.encode(text).tolist(), source))
    if cfg.data.code_problems:  # only when asked, like doc_prompts (it never draws from rng)
        code = load_prompts(cfg.data.suite, category="code")
        examples = [p.text for p in code if p.split == "train"]
        held_out_names = [name for p in code if p.split != "train" for name in re.findall(r"^def (\w+)", p.text, re.MULTILINE)]
        problems = self_written_code_problems(target, examples, cfg.data.code_problems, seed, held_out_names, batch_size=cfg.data.gen_batch_size)
        for i, text in enumerate(problems):
            extra.append(RegenPrompt(f"{id_prefix}problems/{i}", text, target.encode(text).tolist(), "written by the target"))
    for p in extra:
        p.temperature = 1.0 if rng.random() < cfg.data.sampled_fraction else 0.0
    rng.shuffle(extra)
    return extra


def build_prompts(cfg: DictConfig, target: Target, work: Path) -> None:
    """The regeneration manifests `prompts-train.jsonl` and `prompts-val.jsonl` (written atomically).

    Training: the suite's training split (greedy and sampled) and the extra prompts of round 0; each
    `data.round` k > 0 appends round k's extra prompts once (seed + k), so the data grows over runs
    while every earlier row, and its stored continuation, stays. All deduplicated and none equal to a
    val/test prompt. Validation: greedy, the suite's val split, monitoring only.
    """
    train_path, val_path = work / "prompts-train.jsonl", work / "prompts-val.jsonl"
    tok = target.tokenizer
    held_out = [p.text for p in load_prompts(cfg.data.suite) if p.split != "train"]
    if not val_path.exists():
        val = load_prompts(cfg.data.suite, split="val")
        val = val[:: max(1, len(val) // cfg.data.val_prompts)][: cfg.data.val_prompts]  # every category
        write_prompt_list(val_path, [RegenPrompt(f"val/{p.id}", p.text, target.encode(render_prompt(p, tok)).tolist(), p.id) for p in val])
    if cfg.data.round < 0:
        raise ValueError(f"data.round must be 0 (the first manifest) or a positive round to append, got {cfg.data.round}")
    files = text_files_allowed(cfg.data.suite)
    rows = read_prompt_list(train_path) if train_path.exists() else []
    rounds: list[tuple[int, list[RegenPrompt]]] = []  # the rounds this manifest lacks, with their prompts
    if not rows:
        first: list[RegenPrompt] = []
        for p in load_prompts(cfg.data.suite, split="train")[: cfg.data.max_train_prompts]:
            ids = target.encode(render_prompt(p, tok)).tolist()
            first += [RegenPrompt(f"suite/{p.id}@t{t:g}", p.text, ids, p.id, float(t)) for t in cfg.data.suite_temperatures]
        rounds.append((0, first + extra_prompts(cfg, target, files, cfg.train.seed)))
    prefix = f"r{cfg.data.round}/"
    if cfg.data.round and not any(p.id.startswith(prefix) for p in rows):
        rounds.append((cfg.data.round, extra_prompts(cfg, target, files, cfg.train.seed + cfg.data.round, prefix)))
    for number, added in rounds:
        fresh = {p.id for p in added}
        new = [p for p in deduplicate(rows + added, held_out)  # earlier rows win
               if p.id in fresh and len(p.token_ids) + cfg.data.gen_max_new_tokens <= cfg.data.seq_len]
        rows = rows + new
        counts: dict[str, int] = {}
        for p in new:
            key = f"{source_of(p.id)}@t{p.temperature:g}"
            counts[key] = counts.get(key, 0) + 1
        print(f"regeneration prompts added (round {number}): {len(new)} {counts}; {len(rows)} in the manifest")
    if rounds:
        write_prompt_list(train_path, rows)


# --- 2. regenerate ---------------------------------------------------------------------------------


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(key: str, name: str | None) -> torch.dtype | None:
    """The mixed-precision dtype a config key names (null: none, full precision)."""
    if name is None:
        return None
    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"{key}={name!r} is not a mixed-precision dtype; valid: {[*AUTOCAST_DTYPES, None]}")
    return AUTOCAST_DTYPES[name]


def feature_layer_ids(cfg: DictConfig, target: Target) -> list[int]:
    return spread_layer_ids(target.num_layers, cfg.features.num_target_layers)


def build_regenerations(cfg: DictConfig, target: Target, work: Path) -> None:
    """The target's continuations of every manifest prompt, with its states and top-k logits (sharded).

    Continuations stored by an earlier run (`data.continuations`) are rebuilt by one teacher-forced
    pass instead of decoded; what this run holds is written back to `work/continuations.jsonl.gz`,
    the file to keep (ship it as `data.continuations`) so no machine decodes a prompt twice."""
    if not (work / "prompts-train.jsonl").exists():
        raise FileNotFoundError(f"no prompt manifest under {work}: run stage=prompts first")
    val, train = (read_prompt_list(work / f"prompts-{split}.jsonl") for split in ("val", "train"))
    stored = Path(hydra.utils.to_absolute_path(cfg.data.continuations)) if cfg.data.continuations else None
    known = read_continuations(stored, val + train) if stored and stored.exists() else {}
    print(f"stored continuations: {len(known):,} of {len(val) + len(train):,} prompts" + (f" ({stored})" if known else ""))
    options = dict(
        max_new_tokens=cfg.data.gen_max_new_tokens, layer_ids=feature_layer_ids(cfg, target), top_k=cfg.data.top_k,
        batch_size=cfg.data.gen_batch_size, batch_tokens=cfg.data.gen_batch_tokens, shard_sequences=cfg.data.shard_sequences,
        seed=cfg.train.seed, known=known, teacher_autocast=autocast_dtype("data.teacher_autocast", cfg.data.teacher_autocast),
    )
    shard_dir = work / "shards"
    regenerate(target, val, shard_dir, "val", **options)
    first = cfg.data.first_prompt % len(train)  # go on with the rows an earlier drafter never saw
    regenerate(target, train[first:] + train[:first], shard_dir, "train", max_minutes=cfg.data.max_minutes, **options)
    kept = write_continuations(work / "continuations.jsonl.gz", shard_dir, ["train", "val"], carry=stored)
    print(f"wrote {kept:,} continuations to {work / 'continuations.jsonl.gz'}")
    for name in ("train", "val"):
        pool = SequencePool(shard_dir, name, options["layer_ids"])
        print(f"{name}: {len(pool)} sequences, {pool.tokens:,} tokens, {pool.new_tokens:,} written by the target")


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


def build_drafter(cfg: DictConfig, target: Target, train_pool: SequencePool) -> BlockDrafter:
    """A fresh drafter of the configured shape, its draft vocabulary cut from the training continuations."""
    drafter = BlockDrafter.for_target(
        target, num_layers=cfg.drafter.num_layers, block_size=cfg.drafter.block_size,
        target_layer_ids=feature_layer_ids(cfg, target), seed=cfg.train.seed,
    ).float()
    if cfg.drafter.draft_vocab_size:
        counts = train_pool.token_frequencies(target.vocab_size)
        drafter.set_draft_vocabulary(draft_vocabulary(counts, cfg.drafter.draft_vocab_size, always=target.eos_token_ids))
    return drafter


def evaluate(drafter: BlockDrafter, target: Target, cfg: DictConfig, val_pool: SequencePool, decode: bool) -> dict:
    """Validation loss, and acceptance at the largest block replayed on the val continuations (one
    packed pass each; the cycles a greedy decode would run); with `decode`, also measured by real
    decoding on val prompts."""
    generator = torch.Generator().manual_seed(1234)
    embedding = target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)
    block = drafter.max_block_size
    metrics, lengths = [], []
    with torch.no_grad():
        for i in range(len(val_pool)):
            seq = val_pool.get(i, target.device)
            batch = sample_blocks(seq.tokens, seq.loss_start, cfg.train.blocks_per_seq, cfg.train.block_size, drafter.mask_token_id, generator, decay=cfg.train.loss_decay)
            metrics.append(block_loss(drafter, embedding, vocab, seq.features, batch)[1])
            lengths += estimated_acceptance(drafter, embedding, vocab, seq.features, seq.tokens, seq.loss_start, block)
    result = {f"val_{k}": float(np.nanmean([m[k] for m in metrics])) for k in ("loss", "acc", "acc_first")}
    result[f"val_replay_acceptance_b{block}"] = float(np.mean(lengths))
    if decode:
        copy = BlockDrafter(drafter.config)
        copy.load_state_dict(drafter.state_dict())
        copy.bind(target)
        decoded = []
        for prompt in load_prompts(cfg.data.suite, split="val")[:: max(1, 128 // cfg.train.eval_prompts)][: cfg.train.eval_prompts]:
            out = speculative_generate(target, copy, render_prompt(prompt, target.tokenizer), block, max_new_tokens=cfg.train.eval_new_tokens)
            decoded += out.stats.acceptance_lengths
        result[f"val_acceptance_b{block}"] = sum(decoded) / len(decoded)
    return result


def training_dir(cfg: DictConfig, work: Path) -> Path:
    """Where one training run (`train.name`) keeps its checkpoint and log; runs share the cached data."""
    return work / "train" / cfg.train.name


def train(cfg: DictConfig, target: Target, work: Path) -> None:
    if cfg.train.block_size > cfg.drafter.block_size:
        raise ValueError(f"train.block_size ({cfg.train.block_size}) exceeds drafter.block_size ({cfg.drafter.block_size})")
    layer_ids = feature_layer_ids(cfg, target)
    shard_dir = work / "shards"
    pools = {name: SequencePool(shard_dir, name, layer_ids) for name in ("train", "val")}
    if not len(pools["train"]):
        raise RuntimeError(f"no training sequences under {shard_dir}: run stage=prompts and stage=regenerate first")
    print({name: f"{len(p)} sequences / {p.new_tokens:,} target tokens" for name, p in pools.items()})

    drafter = build_drafter(cfg, target, pools["train"])
    if cfg.drafter.init_from:
        warm_start(drafter, load_drafter(cfg.drafter.init_from, target).float())
    elif cfg.drafter.init_from_target:
        init_from_target_layers(drafter, target)
    for p in target.model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    state = {"step": 0, "label_tokens": 0, "seconds": 0.0}
    run = training_dir(cfg, work)
    run.mkdir(parents=True, exist_ok=True)
    checkpoint, log = run / "checkpoint.pt", run / "train_log.jsonl"
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
        log.rename(run / f"train_log.before-{int(time.time())}.jsonl")
    state.setdefault("device", device_name(target.device))
    rng = random.Random(cfg.train.seed + state["step"])
    generator = torch.Generator().manual_seed(cfg.train.seed + state["step"])
    embedding = target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)
    deadline = time.monotonic() + 60 * cfg.train.max_minutes if cfg.train.max_minutes else math.inf

    def save() -> None:
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"drafter": drafter.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                    "torch_rng": torch.get_rng_state(), "config": OmegaConf.to_container(cfg)}, tmp)
        tmp.replace(checkpoint)

    stop = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
    dtype = autocast_dtype("train.autocast", cfg.train.autocast)
    autocast = torch.autocast(target.device.type, dtype=dtype, enabled=dtype is not None)
    bar = tqdm(total=cfg.train.steps, initial=state["step"], desc="train drafter", unit="step")
    drafter.train()
    while state["step"] < stop:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], cfg)
        optimizer.zero_grad(set_to_none=True)
        step_metrics = []
        for _ in range(cfg.train.seqs_per_step):
            seq = pools["train"].get(rng.randrange(len(pools["train"])), target.device)
            batch = sample_blocks(seq.tokens, seq.loss_start, cfg.train.blocks_per_seq, cfg.train.block_size, drafter.mask_token_id,
                                  generator, min_block=cfg.train.min_block, decay=cfg.train.loss_decay)
            with autocast:
                loss, metrics = block_loss(drafter, embedding, vocab, seq.features, batch, (seq.topk_ids, seq.topk_logits), cfg.train.kl_weight)
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
                  "loss": loss_now, "acc": float(np.nanmean([m["acc"] for m in step_metrics]))}
        out_of_time = time.monotonic() >= deadline  # read once: the step that stops the run is the one evaluated
        last = state["step"] == stop or out_of_time
        if state["step"] % cfg.train.eval_every == 0 or last:
            drafter.eval()
            record |= evaluate(drafter, target, cfg, pools["val"], decode=state["step"] == cfg.train.steps or state["step"] % cfg.train.decode_every == 0)
            drafter.train()
            tqdm.write(json.dumps(record))
        if state["step"] % cfg.train.checkpoint_every == 0 or "val_loss" in record:
            save()
        append_jsonl(log, [record])
        if out_of_time:
            break
    save()
    bar.close()


# --- 4. export -------------------------------------------------------------------------------------


def export(cfg: DictConfig, target: Target, work: Path) -> None:
    checkpoint = training_dir(cfg, work) / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: run stage=train first")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    pools = {name: SequencePool(work / "shards", name, feature_layer_ids(cfg, target)) for name in ("train", "val")}
    drafter = build_drafter(cfg, target, pools["train"])
    drafter.load_state_dict(saved["drafter"])
    path = drafter.save(hydra.utils.to_absolute_path(cfg.export.path))
    evals = [r for r in read_jsonl(training_dir(cfg, work) / "train_log.jsonl") if "val_loss" in r]
    (path / "README.md").write_text(render_model_card(cfg, target, drafter, saved["state"], evals, pools, work))
    print(f"exported to {path}")


def source_counts(pool: SequencePool, manifest: list[RegenPrompt]) -> dict[str, tuple[int, int]]:
    """(sequences, target-written tokens) per prompt source and temperature, over the regenerated shards."""
    kind = {p.id: f"{source_of(p.id)} T={p.temperature:g}" for p in manifest}
    counts: dict[str, list[int]] = {}
    for meta in complete_shards(pool.shard_dir, "train"):
        offsets = meta["offsets"]
        for j, (pid, loss_start) in enumerate(zip(meta["ids"], meta["loss_starts"])):
            entry = counts.setdefault(kind.get(pid, "unknown"), [0, 0])
            entry[0] += 1
            entry[1] += offsets[j + 1] - offsets[j] - loss_start
    return {k: (v[0], v[1]) for k, v in sorted(counts.items())}


SOURCE_NAMES = {
    "suite": "the suite's training-split prompts (HumanEval train problems, math, chat, prose)",
    "self": "user turns written by the target itself (chat template's user prefix, sampled, deduplicated)",
    "problems": "HumanEval-style problems written by the target itself (a training-split problem, then `def`, sampled at T=0.7, cut after the docstring; none named like a val/test problem)",
    "math": "fresh problems from the suite's math generator (val/test texts excluded)",
    "code": "stdlib function signatures + docstrings (PSF-2.0; files behind val/test prompts excluded)",
    "prose": "stdlib docstring paragraphs cut part-way (`data.prose_cut`; PSF-2.0; same exclusion)",
    "docs": "paragraphs of Python's reference documentation as pydoc ships it (pydoc_data.topics, PSF-2.0), cut mid-way",
}


def render_model_card(cfg, target, drafter, state, evals, pools, work: Path) -> str:
    params = sum(p.numel() for p in drafter.parameters())
    block = drafter.max_block_size
    curve = "\n".join(
        f"| {r['step']} | {r['label_tokens']:,} | {r['seconds'] / 3600:.2f} | {r['val_loss']:.3f} | {r['val_acc_first']:.3f} | "
        f"{r[f'val_est_acceptance_b{block}']:.2f} | {r[f'val_replay_acceptance_b{block}']:.2f} | "
        f"{r[f'val_acceptance_b{block}']:.2f} |".replace("| nan |", "| - |")
        for r in ({f"val_{k}acceptance_b{block}": math.nan for k in ("est_", "replay_", "")} | e for e in evals)
    )
    sources = "\n".join(
        f"| {kind} | {SOURCE_NAMES.get(kind.split()[0], kind)} | {n:,} | {tokens:,} |"
        for kind, (n, tokens) in source_counts(pools["train"], read_prompt_list(work / "prompts-train.jsonl")).items()
    )
    vocab = (f"the {drafter.draft_vocab_size:,} tokens the target wrote most often in the training continuations "
             f"(stored as `draft_token_ids`)" if drafter.draft_token_ids is not None else "the full vocabulary")
    return f"""# {Path(cfg.export.path).name}: block drafter for `{target.name}`

Architecture: DFlash-style block drafter (`bp_rl.BlockDrafter`), {drafter.config.num_hidden_layers} Qwen3-style layers,
hidden {drafter.config.hidden_size}, {params / 1e6:.1f}M parameters (fp16), reading target layers
{list(drafter.target_layer_ids)}, block size up to {block}, mask token {drafter.mask_token_id}; embedding
and LM head are the target's own; it drafts over {vocab}. Initialised from:
{cfg.drafter.init_from or ("the target's top layers" if cfg.drafter.init_from_target else "random")}.

## Data
Every label is the target's own continuation (greedy, or sampled at T=1), {cfg.data.gen_max_new_tokens} new tokens at
most, with the target's hidden states and top-{cfg.data.top_k} logits kept from the same passes. Nothing comes from
val/test prompts or from the stdlib files a val/test prose prompt was cut from.

| source | what | sequences | target-written tokens |
|---|---|---:|---:|
{sources}

Total: {len(pools['train']):,} sequences, {pools['train'].new_tokens:,} target-written tokens ({pools['train'].tokens:,} with prompts).
Monitoring only (never trained on): greedy continuations of {len(pools['val'])} val-split prompts.

## Recipe
{state['step']} steps, {state['label_tokens']:,} labelled block positions, {state['seconds'] / 60:.1f} min of training on
{state.get('device', 'unknown device')}; AdamW lr {cfg.train.lr} (warmup {cfg.train.warmup_steps}, cosine to 10%),
{cfg.train.seqs_per_step} sequences x {cfg.train.blocks_per_seq} distinct anchors per step, random block sizes
{cfg.train.min_block}-{cfg.train.block_size}, loss weight exp(-(p-1)/{cfg.train.loss_decay}) at block position p,
loss (1 - {cfg.train.kl_weight}) x cross-entropy on the target's token + {cfg.train.kl_weight} x cross-entropy against the
target's top-{cfg.data.top_k} distribution; training passes under {cfg.train.autocast or 'float32'} autocast (evaluation in float32).

## Learning curve
On the val continuations: loss, first-position accuracy, and acceptance at block {block} (tokens per verify pass,
bonus included) from one packed pass each: "replayed" over the cycles a greedy decode runs (exact at T=0),
"per-anchor" (older runs only) the mean over every anchor, which overstates it (a long easy stretch counts at
each of its anchors, but a decode crosses it in a few cycles); "decoded" is real greedy decoding of
{cfg.train.eval_prompts} val prompts ({cfg.train.eval_new_tokens} new tokens).

| step | labelled positions | training hours (wall) | val loss | val first-position acc | per-anchor acceptance | replayed acceptance | decoded acceptance |
|---:|---:|---:|---:|---:|---:|---:|---:|
{curve}

Reproduce: `python experiments/train_drafter.py` (see `experiments/conf/train_drafter.yaml`).
"""


@hydra.main(config_path="conf", config_name="train_drafter", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.stage not in (*STAGES, "all"):
        raise ValueError(f"unknown stage {cfg.stage!r}; valid: {[*STAGES, 'all']}")
    stages = STAGES if cfg.stage == "all" else (cfg.stage,)
    for key in ("data.teacher_autocast", "train.autocast"):  # fail before the slow stages, not in them
        autocast_dtype(key, OmegaConf.select(cfg, key))
    work = Path(hydra.utils.to_absolute_path(cfg.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    target = load_target(cfg.target, device=cfg.device)
    for stage in stages:
        {"prompts": build_prompts, "regenerate": build_regenerations, "train": train, "export": export}[stage](cfg, target, work)


if __name__ == "__main__":
    main()
