"""Training data for a block drafter: the target's own continuations, with their features and soft labels.

A drafter must predict what the *target* will write, so its data is the target's regeneration of
many prompts, never raw text labels. The pipeline:

1. prompts: the prompt suite's training split, user turns and HumanEval-style code problems the
   target writes itself (the chat template's user prefix alone, or one training-split problem then
   `def`, sampled, deduplicated), and continuation prompts cut from offline
   text (`offline_code_prompts`, `offline_prose_prompts`, `offline_doc_prompts`); `deduplicate` drops repeats and anything
   equal to a held-out prompt;
2. `regenerate`: batched target decoding (greedy or sampled) that keeps, from the same passes, the
   target's hidden states at the drafter's layers and its top-k logits at every position: the
   drafter's inputs and its soft labels, with no second teacher-forced pass. A prompt whose
   continuation is already known (`read_continuations`: the small, portable record of an earlier
   run) is not decoded again: one teacher-forced pass rebuilds its features and soft labels;
3. shards on disk (`write_shard`), one `.json` meta per shard written last, so an interrupted run
   resumes after the last complete shard and never holds a half-written one; `write_continuations`
   keeps just the target-written tokens of every shard (a few MB, against GBs of features), so the
   slow part, decoding, is never redone on a new machine;
4. `SequencePool`: every shard of a set, memory-mapped, for training and evaluation;
5. `token_frequencies`: counts of the target's output tokens, from which a reduced draft vocabulary
   is cut.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm
from transformers import DynamicCache

from bp_rl.drafter import layer_states
from bp_rl.models import Target


@dataclass
class RegenPrompt:
    """A prompt to regenerate: its id, its text, the token ids the target sees, and where it came from."""

    id: str
    text: str
    token_ids: list[int]
    source: str
    temperature: float = 0.0  # 0: the target's greedy continuation; > 0: a sample


# --- 1. prompts ------------------------------------------------------------------------------------


def user_prefix(target: Target) -> str:
    """The chat template up to where a user turn's text begins (system prompt included)."""
    sentinel = "\x00USER\x00"
    rendered = target.tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=False)
    return rendered.split(sentinel)[0]


def _sample_unique(
    target: Target, prefixes: Callable[[], list[list[int]]], keep: Callable[[DecodedSequence], str | None],
    count: int, seed: int, max_tokens: int, temperature: float, desc: str,
) -> list[str]:
    """Texts the target writes: batches of prompts (one batch per `prefixes()` call) sampled, each output turned
    into a text by `keep` (None: rejected), duplicates dropped, until `count` (or 4x that many tries)."""
    texts: list[str] = []
    seen: set[str] = set()
    generator = torch.Generator(device=target.device).manual_seed(seed)
    with tqdm(total=count, desc=desc, unit="text") as bar:
        attempts = 0
        while len(texts) < count and attempts < 4 * count:
            batch = prefixes()
            attempts += len(batch)
            for out in _batched_decode(target, batch, max_tokens, temperature, generator, layer_ids=(), top_k=0):
                text = keep(out)
                if text is None:
                    continue
                key = normalise(text)
                if key not in seen:
                    seen.add(key)
                    texts.append(text)
                    bar.update()
    return texts[:count]


def self_written_user_turns(
    target: Target, count: int, seed: int, max_tokens: int = 64, batch_size: int = 64, temperature: float = 1.0
) -> list[str]:
    """User turns the target writes itself: the user prefix alone, sampled; duplicates dropped."""
    prefix = target.encode(user_prefix(target)).tolist()
    end_of_turn = set(target.eos_token_ids)

    def whole_turn(out: DecodedSequence) -> str | None:
        if not out.finished:  # cut off mid-turn: not a whole user message
            return None
        text = target.decode([t for t in out.new_tokens if t not in end_of_turn]).strip()
        return text if len(text.split()) >= 3 else None

    return _sample_unique(target, lambda: [prefix] * batch_size, whole_turn, count, seed, max_tokens, temperature, "self-written user turns")


DOCSTRING_OPENS = re.compile(r"""def \w+\(.*?\).*?:\n[ \t]+("{3}|'{3})""", re.DOTALL)


def function_head(text: str) -> str | None:
    """`text` up to the end of its first function's docstring, when it starts with a `def` whose
    signature and docstring (five words or more) parse; else None. The code problems the target
    writes are cut this way."""
    match = DOCSTRING_OPENS.match(text)
    if not match:
        return None
    close = text.find(match.group(1), match.end())
    if close < 0:
        return None
    head = text[: close + 3] + "\n"
    try:
        tree = ast.parse(head + "    pass\n")
    except (SyntaxError, ValueError):
        return None
    function = tree.body[0] if len(tree.body) == 1 else None
    doc = ast.get_docstring(function) if isinstance(function, ast.FunctionDef) else None
    return head if doc and len(doc.split()) >= 5 else None


def self_written_code_problems(
    target: Target, examples: list[str], count: int, seed: int, banned_names: Iterable[str] = (),
    max_tokens: int = 128, batch_size: int = 64, temperature: float = 0.7,
) -> list[str]:
    """HumanEval-style problems the target writes itself: one example problem (`examples`, e.g. the
    suite's training split) followed by `def`, sampled, cut at the end of the new function's
    docstring (`function_head`). Functions named like a held-out problem (`banned_names`) are
    dropped, so a problem the target remembers from val/test cannot leak into training."""
    if not examples:
        raise ValueError("self-written code problems need at least one example problem")
    rng = random.Random(seed)
    banned = set(banned_names)

    def prefixes() -> list[list[int]]:
        # ends at "def", not "def ": the target's next token carries its own leading space
        return [target.encode(rng.choice(examples) + "    pass\n\n\ndef").tolist() for _ in range(batch_size)]

    def problem(out: DecodedSequence) -> str | None:
        head = function_head("def" + target.decode(out.new_tokens))
        return head if head and head[len("def ") : head.index("(")] not in banned else None

    return _sample_unique(target, prefixes, problem, count, seed, max_tokens, temperature, "self-written code problems")


def python_functions(path: Path) -> Iterable[tuple[str, str]]:
    """(head, docstring paragraph) pairs of a Python file: a function's source up to the end of its
    docstring, and the docstring's long paragraphs."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    lines = source.splitlines(keepends=True)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
            doc = node.body[0]
            head = "".join(lines[node.lineno - 1 : doc.end_lineno])
            yield head, ast.get_docstring(node) or ""


def offline_code_prompts(files: list[Path], limit: int, rng: random.Random, max_chars: int = 1500) -> list[tuple[str, str]]:
    """(text, source) code-continuation prompts: a function's signature and docstring, HumanEval style."""
    found = [(head, f"{path.name}") for path in files for head, _ in python_functions(path) if len(head) <= max_chars]
    rng.shuffle(found)
    return found[:limit]


def cut_paragraphs(texts: Iterable[tuple[str, str]], min_chars: int = 200, cut: float = 0.5) -> list[tuple[str, str]]:
    """(the first `cut` of a paragraph's words, source) for every paragraph of `min_chars` or more
    without doctest lines, over (text, source) pairs: prose to continue."""
    if not 0 < cut < 1:
        raise ValueError(f"cut is the share of a paragraph's words kept as the prompt, in (0, 1); got {cut}")
    found = []
    for text, source in texts:
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= min_chars and ">>>" not in para:
                words = para.split()
                found.append((" ".join(words[: int(len(words) * cut)]), source))
    return found


def offline_prose_prompts(
    files: list[Path], limit: int, rng: random.Random, min_chars: int = 200, cut: float = 0.5
) -> list[tuple[str, str]]:
    """(text, source) prose-continuation prompts: a docstring paragraph cut after `cut` of its words."""
    found = cut_paragraphs(((doc, path.name) for path in files for _, doc in python_functions(path)), min_chars, cut)
    rng.shuffle(found)
    return found[:limit]


def offline_doc_prompts(limit: int, rng: random.Random, min_chars: int = 200) -> list[tuple[str, str]]:
    """(text, source) prose-continuation prompts from Python's reference documentation as pydoc ships
    it (`pydoc_data.topics`, PSF-2.0): each paragraph cut after about half its words; indented
    paragraphs (grammar rules, code examples) are not prose and are skipped."""
    from pydoc_data.topics import topics

    prose = (("\n\n".join(p for p in text.split("\n\n") if not p.startswith(" ")), f"pydoc_data topic {name!r}")
             for name, text in sorted(topics.items()))
    found = cut_paragraphs(prose, min_chars)
    rng.shuffle(found)
    return found[:limit]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def deduplicate(prompts: Iterable[RegenPrompt], held_out_texts: Iterable[str] = ()) -> list[RegenPrompt]:
    """First occurrence of each distinct (token sequence, temperature), minus any whose text equals a
    held-out prompt's."""
    banned = {normalise(t) for t in held_out_texts}
    seen: set[tuple] = set()
    kept = []
    for p in prompts:
        key = (p.temperature, *p.token_ids)
        if key in seen or normalise(p.text) in banned:
            continue
        seen.add(key)
        kept.append(p)
    return kept


def write_prompt_list(path: Path, prompts: list[RegenPrompt]) -> None:
    """The regeneration prompts as JSONL, atomically (the manifest that makes a run reproducible)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(vars(p)) + "\n" for p in prompts))
    tmp.replace(path)


def read_prompt_list(path: Path) -> list[RegenPrompt]:
    return [RegenPrompt(**json.loads(line)) for line in path.read_text().splitlines() if line]


# --- 2. regeneration -------------------------------------------------------------------------------


@dataclass
class DecodedSequence:
    """One regenerated sequence: prompt + new tokens, with per-position features and top-k logits."""

    tokens: list[int]
    prompt_len: int
    features: np.ndarray  # (len, feature_dim) fp16; the last row is zero (that token never went through the target)
    topk_ids: np.ndarray  # (len, k) int32: the target's top-k next-token ids after each position (rows < prompt_len - 1 zero)
    topk_logits: np.ndarray  # (len, k) fp16
    finished: bool  # ended with a stop token within the budget

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len :]


def _kept_rows(
    tokens: list[int], prompt_len: int, states: torch.Tensor | None, top: tuple[torch.Tensor, torch.Tensor] | None, top_k: int,
    finished: bool,
) -> DecodedSequence:
    """One sequence's kept arrays, full length: `states` of positions 0 .. len - 2 (the last token
    never went through the target; its row stays zero) and the top-k rows of positions
    prompt_len - 1 .. len - 2 (`top`: their ids and logits; the rows before stay zero)."""
    length = len(tokens)
    features = np.zeros((length, states.shape[-1] if states is not None else 0), dtype=np.float16)
    if states is not None:
        features[: length - 1] = states.numpy()
    k_ids = np.zeros((length, top_k), dtype=np.int32)
    k_logits = np.zeros((length, top_k), dtype=np.float16)
    if top is not None:
        k_ids[prompt_len - 1 : length - 1] = top[0].numpy()
        k_logits[prompt_len - 1 : length - 1] = top[1].numpy()
    return DecodedSequence(tokens, prompt_len, features, k_ids, k_logits, finished)


@torch.inference_mode()
def _batched_decode(
    target: Target,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None,
    layer_ids: tuple[int, ...] | list[int],
    top_k: int,
) -> list[DecodedSequence]:
    """Left-padded batched decoding that keeps, from the same forward passes, the hidden states at
    `layer_ids` and the top-k logits of every processed position (greedy when temperature is 0)."""
    device = target.device
    batch = len(prompts)
    width = max(map(len, prompts))
    ids = torch.zeros(batch, width, dtype=torch.long, device=device)
    mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, device=device)
        mask[i, width - len(p) :] = 1
    cache = DynamicCache()
    stops = torch.tensor(target.eos_token_ids or [-1], device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    step_feats, step_ids, step_logits, new_tokens = [], [], [], []
    inputs, keep = ids, width
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -inputs.shape[1] :]
        out = target.model(
            input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=cache,
            use_cache=True, output_hidden_states=bool(layer_ids), logits_to_keep=1,
        )
        if layer_ids:
            step_feats.append(layer_states(out.hidden_states, layer_ids, slice(-keep, None)).half().cpu())
        logits = out.logits[:, -1].float()
        if top_k:
            best = logits.topk(top_k, dim=-1)
            step_ids.append(best.indices.int().cpu())
            step_logits.append(best.values.half().cpu())
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]
        else:
            token = logits.argmax(dim=-1)
        new_tokens.append(torch.where(finished, stops[0], token))
        finished |= torch.isin(token, stops)
        if bool(finished.all()):
            break
        inputs, keep = token[:, None], 1
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)

    generated = torch.stack(new_tokens, dim=1).tolist()
    feats = torch.cat(step_feats, dim=1) if step_feats else None  # (batch, width + steps - 1, dim)
    top_ids, top_logits = (torch.stack(step_ids, dim=1), torch.stack(step_logits, dim=1)) if top_k else (None, None)
    results = []
    for i, prompt in enumerate(prompts):
        response = generated[i]
        ends = [j for j, t in enumerate(response) if t in target.eos_token_ids]
        response = response[: ends[0] + 1] if ends else response
        tokens = list(prompt) + response
        pad = width - len(prompt)
        # the forward passes saw tokens[:-1]; their states sit at columns pad .. pad + len(tokens) - 2,
        # and step s's logits follow position len(prompt) - 1 + s
        results.append(_kept_rows(
            tokens, len(prompt), feats[i, pad : pad + len(tokens) - 1] if feats is not None else None,
            (top_ids[i, : len(response)], top_logits[i, : len(response)]) if top_k else None, top_k, bool(ends),
        ))
    return results


def greedy_guesses(target: Target, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """The greedy continuations of `prompts` decoded as one batch (each up to its first EOS), several
    times cheaper per prompt than decoding one by one. Guesses, not references: the padded batch's
    shapes round differently, which can flip a near-tie; `trace_request(guess=)` checks them."""
    return [s.new_tokens for s in _batched_decode(target, prompts, max_new_tokens, 0.0, None, (), 0)]


@torch.inference_mode()
def _teacher_forced(
    target: Target, prompts: list[list[int]], continuations: list[list[int]], layer_ids: tuple[int, ...] | list[int], top_k: int
) -> list[DecodedSequence]:
    """What `_batched_decode` keeps for sequences whose continuation is known, from one right-padded
    forward pass: the same features and top-k logits (up to float rounding) at a fraction of the cost.
    Logits are kept only from the shortest prompt's last token on (where top-k rows are needed)."""
    sequences = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    batch, width = len(sequences), max(map(len, sequences))
    ids = torch.zeros(batch, width, dtype=torch.long, device=target.device)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, device=target.device)
        mask[i, : len(seq)] = 1
    first_logit = min(map(len, prompts)) - 1
    out = target.model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(layer_ids), logits_to_keep=width - first_logit)
    feats = layer_states(out.hidden_states, layer_ids).half().cpu() if layer_ids else None
    stops = set(target.eos_token_ids)
    results = []
    for i, (prompt, seq) in enumerate(zip(prompts, sequences)):
        best = out.logits[i, len(prompt) - 1 - first_logit : len(seq) - 1 - first_logit].float().topk(top_k, dim=-1) if top_k else None
        results.append(_kept_rows(
            seq, len(prompt), feats[i, : len(seq) - 1] if feats is not None else None,
            (best.indices.int().cpu(), best.values.half().cpu()) if top_k else None, top_k, len(seq) > len(prompt) and seq[-1] in stops,
        ))
    return results


def length_batches(prompts: list[RegenPrompt], batch_size: int, batch_tokens: int) -> list[list[RegenPrompt]]:
    """Batches of one temperature and similar length (sorted), each at most `batch_size` prompts and
    `batch_tokens` padded prompt tokens: a long prompt does not pad a whole large batch."""
    batches: list[list[RegenPrompt]] = []
    for p in sorted(prompts, key=lambda p: (p.temperature, len(p.token_ids))):
        last = batches[-1] if batches else None
        fits = last and last[0].temperature == p.temperature and len(last) < batch_size and (len(last) + 1) * len(p.token_ids) <= batch_tokens
        if fits:
            last.append(p)
        else:
            batches.append([p])
    return batches


def regenerate(
    target: Target,
    prompts: list[RegenPrompt],
    out_dir: Path,
    name: str,
    max_new_tokens: int,
    layer_ids: list[int],
    top_k: int = 32,
    batch_size: int = 32,
    batch_tokens: int = 4096,
    shard_sequences: int = 256,
    seed: int = 0,
    max_minutes: float | None = None,
    known: dict[str, list[int]] | None = None,
    teacher_autocast: torch.dtype | None = None,
) -> None:
    """Regenerate `prompts` (each at its own temperature) into shards `out_dir/name-*`, in order;
    resumes after the last complete shard (a prompt is done once its id is in a shard's meta).
    `known` (prompt id -> continuation, from `read_continuations`) are rebuilt by teacher forcing,
    not decoded again; `teacher_autocast` (e.g. torch.bfloat16) runs those rebuilds in mixed
    precision: the labels are the stored tokens either way, only the states and soft labels carry
    its rounding. Decoding always runs in the target's own dtype, so continuations stay its own."""
    known = known or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = complete_shards(out_dir, name)
    done = {i for meta in shards for i in meta["ids"]}
    todo = [p for p in prompts if p.id not in done]
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else float("inf")
    shard_index = len(shards)
    generator = torch.Generator(device=target.device).manual_seed(seed + shard_index)
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"regenerate {name}", unit="seq") as bar:
        for start in range(0, len(todo), shard_sequences):
            if time.monotonic() > deadline:
                tqdm.write(f"regenerate {name}: stopped by max_minutes; re-run to resume")
                return
            order, sequences = [], []
            chunk = todo[start : start + shard_sequences]
            for stored in (True, False):  # stored continuations are rebuilt by teacher forcing, the rest decoded
                for batch in length_batches([p for p in chunk if (p.id in known) == stored], batch_size, batch_tokens):
                    ids = [p.token_ids for p in batch]
                    if stored:
                        with torch.autocast(target.device.type, dtype=teacher_autocast, enabled=teacher_autocast is not None):
                            sequences += _teacher_forced(target, ids, [known[p.id] for p in batch], layer_ids, top_k)
                    else:
                        sequences += _batched_decode(target, ids, max_new_tokens, batch[0].temperature, generator, layer_ids, top_k)
                    order += batch
                    bar.update(len(batch))
            write_shard(out_dir / f"{name}-{shard_index:05d}", order, sequences, layer_ids)
            shard_index += 1


# --- 3. shards -------------------------------------------------------------------------------------


def write_shard(stem: Path, prompts: list[RegenPrompt], sequences: list[DecodedSequence], layer_ids: list[int]) -> None:
    """Arrays first, each atomically; the .json meta last: it marks the shard complete."""
    arrays = {
        "tokens": np.concatenate([np.asarray(s.tokens, dtype=np.int32) for s in sequences]),
        "features": np.concatenate([s.features for s in sequences]),
        "topk_ids": np.concatenate([s.topk_ids for s in sequences]),
        "topk_logits": np.concatenate([s.topk_logits for s in sequences]),
    }
    for key, array in arrays.items():
        np.save(f"{stem}.{key}.tmp.npy", array)
        os.replace(f"{stem}.{key}.tmp.npy", f"{stem}.{key}.npy")
    meta = {
        "ids": [p.id for p in prompts],
        "temperatures": [p.temperature for p in prompts],
        "offsets": np.cumsum([0] + [len(s.tokens) for s in sequences]).tolist(),
        "loss_starts": [s.prompt_len for s in sequences],
        "layer_ids": list(layer_ids),
    }
    Path(f"{stem}.json.tmp").write_text(json.dumps(meta))
    os.replace(f"{stem}.json.tmp", f"{stem}.json")


def complete_shards(shard_dir: Path, name: str) -> list[dict]:
    return [json.loads(m.read_text()) | {"stem": m.stem} for m in sorted(shard_dir.glob(f"{name}-*.json"))]


def prompt_digest(token_ids: list[int]) -> str:
    """A short fingerprint of a prompt's token ids: a stored continuation is reused only for the very
    prompt (same text, same tokenizer) it continued."""
    return hashlib.sha1(",".join(map(str, token_ids)).encode()).hexdigest()[:12]


def write_continuations(path: Path, shard_dir: Path, names: list[str], carry: Path | None = None) -> int:
    """Every complete shard's target-written tokens as gzipped JSONL (id, temperature, prompt digest,
    new tokens), atomically; returns how many. This is what a run keeps of its regeneration.

    `carry`: an earlier such file whose rows the shards lack are kept as they are, so a run cut short
    (or one over part of the manifest) never drops what an earlier run stored."""
    rows = []
    for meta in (meta for name in names for meta in complete_shards(shard_dir, name)):
        tokens = np.load(shard_dir / f"{meta['stem']}.tokens.npy")
        offsets = meta["offsets"]
        for j, (pid, temperature, loss_start) in enumerate(zip(meta["ids"], meta["temperatures"], meta["loss_starts"])):
            seq = tokens[offsets[j] : offsets[j + 1]].tolist()
            rows.append({"id": pid, "temperature": temperature, "prompt": prompt_digest(seq[:loss_start]), "new_tokens": seq[loss_start:]})
    if carry is not None and carry.exists():
        written = {r["id"] for r in rows}
        with gzip.open(carry, "rt") as f:
            rows += [row for row in map(json.loads, f) if row["id"] not in written]
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tmp.replace(path)
    return len(rows)


def read_continuations(path: Path, prompts: list[RegenPrompt]) -> dict[str, list[int]]:
    """The stored continuations of `prompts` (prompt id -> new tokens); a row whose prompt tokens or
    temperature differ from the manifest's (another tokenizer, another manifest) is an error."""
    by_id = {p.id: p for p in prompts}
    known = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            p = by_id.get(row["id"])
            if p is None:
                continue
            if row["prompt"] != prompt_digest(p.token_ids) or row["temperature"] != p.temperature:
                raise ValueError(f"{path}: the continuation of {row['id']!r} was made for another prompt or temperature than the manifest's")
            known[row["id"]] = row["new_tokens"]
    return known


@dataclass
class Sequence:
    tokens: torch.Tensor  # (len,) long
    features: torch.Tensor  # (len, feature_dim) float32
    loss_start: int  # first labelled position (the prompt's length)
    topk_ids: torch.Tensor  # (len, k) long
    topk_logits: torch.Tensor  # (len, k) float32


class SequencePool:
    """Every complete shard of one sequence set, memory-mapped."""

    def __init__(self, shard_dir: Path, names: str | list[str], layer_ids: list[int]):
        self.shard_dir = shard_dir
        self.items = []
        for name in [names] if isinstance(names, str) else names:
            for meta in complete_shards(shard_dir, name):
                if meta["layer_ids"] != list(layer_ids):
                    raise ValueError(f"shard {meta['stem']} holds target layers {meta['layer_ids']}, the drafter reads {list(layer_ids)}")
                arrays = {k: np.load(shard_dir / f"{meta['stem']}.{k}.npy", mmap_mode="r") for k in ("tokens", "features", "topk_ids", "topk_logits")}
                offsets = meta["offsets"]
                for j, loss_start in enumerate(meta["loss_starts"]):
                    if offsets[j + 1] - offsets[j] - loss_start >= 1:  # at least one new token
                        self.items.append((arrays, offsets[j], offsets[j + 1], loss_start))
        self.tokens = sum(e - s for _, s, e, _ in self.items)
        self.new_tokens = sum(e - s - ls for _, s, e, ls in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int, device: torch.device | str = "cpu") -> Sequence:
        arrays, s, e, loss_start = self.items[i]
        return Sequence(
            tokens=torch.from_numpy(np.asarray(arrays["tokens"][s:e], dtype=np.int64)),
            features=torch.from_numpy(np.asarray(arrays["features"][s:e], dtype=np.float32)).to(device),
            loss_start=loss_start,
            topk_ids=torch.from_numpy(np.asarray(arrays["topk_ids"][s:e], dtype=np.int64)),
            topk_logits=torch.from_numpy(np.asarray(arrays["topk_logits"][s:e], dtype=np.float32)),
        )

    def token_frequencies(self, vocab_size: int) -> np.ndarray:
        """How often the target wrote each token (new tokens only, not prompts)."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for arrays, s, e, loss_start in self.items:
            counts += np.bincount(np.asarray(arrays["tokens"][s + loss_start : e]), minlength=vocab_size)
        return counts


def draft_vocabulary(counts: np.ndarray, size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The `size` most frequent token ids (ties by id), plus `always` (e.g. the stop tokens), sorted by id."""
    must = sorted(set(always))
    order = [int(t) for t in np.lexsort((np.arange(len(counts)), -counts)) if int(t) not in must]
    return torch.tensor(sorted(must + order[: size - len(must)]), dtype=torch.long)
