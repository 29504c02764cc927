"""The block drafter: a DFlash-style block-diffusion drafter that drafts a whole block in one pass.

Architecture (checkpoint-compatible with the public DFlash drafter):
- the target's hidden states at `target_layer_ids` are concatenated, fused by a linear layer
  (`fc`) and normalised (`hidden_norm`): this is the drafter's view of the committed context;
- the block is [last committed token, mask, mask, ...], embedded with the target's own
  (frozen, shared) embedding;
- a few Qwen3-style layers, in which the block's queries attend, with no causal mask, to keys
  and values built from [fused context, block states]: bidirectional inside the block;
- the target's own LM head turns the final states into draft logits, optionally over a reduced
  draft vocabulary (the K tokens the target writes most, as in FR-Spec / EAGLE-3): a token-id map
  `draft_token_ids` stored with the checkpoint picks the head's rows. Verification still uses the
  full vocabulary, so greedy output is unchanged and sampling stays exact (q is zero outside the map).
The fused context's keys/values are cached across cycles; the block's are dropped after each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding

from bp_rl.drafter import Draft, DraftContext, Drafter, entropy_of
from bp_rl.models import Target
from bp_rl.sampling import Sampler

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (batch, heads, length, head_dim); cos/sin: (batch, length, head_dim)
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class BlockAttention(nn.Module):
    """Block queries attending to [context, block] keys/values (no causal mask by default)."""

    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, block, context, cos, sin, attention_mask=None, past_key_values=None, is_causal=False):
        batch, block_len, _ = block.shape
        both = torch.cat([context, block], dim=1)
        q = self.q_norm(self.q_proj(block).view(batch, block_len, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(both).view(batch, both.shape[1], -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(both).view(batch, both.shape[1], -1, self.head_dim).transpose(1, 2)
        q = _apply_rope(q, cos[:, -block_len:], sin[:, -block_len:])
        k = _apply_rope(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attention_mask,
            # is_causal uses SDPA's top-left alignment, as the reference does; unused in decoding
            is_causal=is_causal and block_len > 1 and attention_mask is None,
            scale=self.head_dim**-0.5,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, block_len, -1))


class BlockLayer(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.self_attn = BlockAttention(config, layer_idx)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, block, context, cos, sin, **attention_kwargs):
        block = block + self.self_attn(self.input_layernorm(block), context, cos, sin, **attention_kwargs)
        return block + self.mlp(self.post_attention_layernorm(block))


class BlockDrafter(nn.Module, Drafter):
    """DFlash-compatible block drafter. Bind it to a target (`for_target`, `load`) to draft."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        dflash = getattr(config, "dflash_config", None) or {}
        missing = [key for key in ("target_layer_ids", "mask_token_id") if key not in dflash]
        if missing or not hasattr(config, "num_target_layers"):
            raise ValueError(
                f"not a DFlash drafter config: needs dflash_config.target_layer_ids, dflash_config.mask_token_id "
                f"and num_target_layers (missing: {missing or ['num_target_layers']})"
            )
        self.config = config
        self.layers = nn.ModuleList(BlockLayer(config, i) for i in range(config.num_hidden_layers))
        self.fc = nn.Linear(len(dflash["target_layer_ids"]) * config.hidden_size, config.hidden_size, bias=False)
        self.hidden_norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config)
        draft_vocab = dflash.get("draft_vocab_size")
        # saved with the weights; a public DFlash checkpoint has none (a None buffer is not saved): full head
        self.register_buffer("draft_token_ids", None if draft_vocab is None else torch.zeros(int(draft_vocab), dtype=torch.long))
        self._target: Target | None = None  # not a submodule: the target's weights are shared, never saved
        self._head: torch.Tensor | None = None  # the target's LM head rows this drafter drafts from

    # --- what the decoding engine reads -------------------------------------------------------
    @property
    def target_layer_ids(self) -> tuple[int, ...]:
        return tuple(self.config.dflash_config["target_layer_ids"])

    @property
    def mask_token_id(self) -> int:
        return int(self.config.dflash_config["mask_token_id"])

    @property
    def max_block_size(self) -> int:
        return int(self.config.dflash_config.get("block_size", getattr(self.config, "block_size", 16)))

    # --- the model ----------------------------------------------------------------------------
    def forward(
        self,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        noise_embedding: torch.Tensor | None = None,
        target_hidden: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        use_cache: bool = False,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Final hidden states of the block.

        noise_embedding: (batch, block, hidden) embedded block tokens. target_hidden: (batch,
        ctx, len(target_layer_ids) * hidden) target states of context tokens not yet in
        `past_key_values`. position_ids: (batch, ctx + block). `use_cache` is accepted for
        signature compatibility: a given `past_key_values` is always updated.
        """
        context = self.hidden_norm(self.fc(target_hidden))
        cos, sin = self.rotary_emb(noise_embedding, position_ids)
        hidden = noise_embedding
        for layer in self.layers:
            hidden = layer(
                hidden, context, cos, sin,
                attention_mask=attention_mask, past_key_values=past_key_values, is_causal=is_causal,
            )
        return self.norm(hidden)

    # --- the draft vocabulary -----------------------------------------------------------------
    @property
    def draft_vocab_size(self) -> int:
        return self.config.vocab_size if self.draft_token_ids is None else len(self.draft_token_ids)

    def set_draft_vocabulary(self, token_ids: torch.Tensor | None) -> "BlockDrafter":
        """Draft over these target token ids only (None: the full vocabulary)."""
        if token_ids is None:
            self.config.dflash_config.pop("draft_vocab_size", None)
            self.draft_token_ids = None
        else:
            ids = torch.as_tensor(token_ids, dtype=torch.long).unique()
            if len(ids) < 2 or int(ids[0]) < 0 or int(ids[-1]) >= self.config.vocab_size:
                raise ValueError(f"draft vocabulary needs >= 2 distinct ids in [0, {self.config.vocab_size}), got {len(ids)} in [{int(ids[0])}, {int(ids[-1])}]")
            self.config.dflash_config["draft_vocab_size"] = len(ids)
            self.draft_token_ids = ids.to(self.fc.weight.device)
        self._head = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._head = None  # new draft_token_ids may come in: slice the head again
        super()._load_from_state_dict(*args, **kwargs)

    def draft_head(self) -> torch.Tensor:
        """(draft vocab, hidden) LM-head rows of the draft vocabulary, sliced once per binding."""
        if self._head is None:
            weight = self._bound_target().model.get_output_embeddings().weight
            self._head = weight.detach() if self.draft_token_ids is None else weight.detach()[self.draft_token_ids]
        return self._head

    # --- drafting -----------------------------------------------------------------------------
    def new_cache(self) -> DynamicCache:
        return DynamicCache()

    @torch.inference_mode()
    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        target = self._bound_target()
        anchor = len(context.token_ids) - 1  # position of the newest committed token
        cache: DynamicCache = context.cache
        seen = cache.get_seq_length()
        new_hidden = context.new_hidden
        if new_hidden is None or seen + new_hidden.shape[1] != anchor:
            shown = 0 if new_hidden is None else new_hidden.shape[1]
            raise RuntimeError(f"drafter context out of sync: cached {seen} + new {shown} != anchor position {anchor}")
        block = torch.full((num_tokens + 1,), self.mask_token_id, dtype=torch.long, device=target.device)
        block[0] = context.token_ids[-1]
        embedding = F.embedding(block, target.model.get_input_embeddings().weight)[None]
        positions = torch.arange(seen, anchor + num_tokens + 1, device=target.device)[None]
        hidden = self(position_ids=positions, noise_embedding=embedding, target_hidden=new_hidden, past_key_values=cache)
        cache.crop(-(num_tokens + 1))  # keep the context, drop the block
        logits = F.linear(hidden[0, 1:], self.draft_head()).float()
        ids = self.draft_token_ids
        if sampler.greedy:
            p = logits.softmax(dim=-1)
            confidence, best = p.max(dim=-1)
            return Draft(best if ids is None else ids[best], confidence=confidence, entropy=entropy_of(p))
        q = sampler.probs(logits)
        drawn, confidence = sampler.draw(q), q.max(dim=-1).values
        if ids is None:
            return Draft(drawn, q, confidence, entropy_of(q))
        # q over the full vocabulary: zero outside the draft vocabulary, so verification stays exact
        full = torch.zeros(q.shape[0], self.config.vocab_size, dtype=q.dtype, device=q.device)
        return Draft(ids[drawn], full.index_copy_(1, ids, q), confidence, entropy_of(q))

    # --- construction, binding, persistence ---------------------------------------------------
    @classmethod
    def for_target(
        cls,
        target: Target,
        num_layers: int = 2,
        block_size: int = 16,
        target_layer_ids: list[int] | None = None,
        intermediate_size: int | None = None,
        mask_token_id: int | None = None,
        seed: int | None = None,
    ) -> "BlockDrafter":
        """A randomly initialised drafter shaped for `target` (same width, heads and vocabulary)."""
        if block_size < 2:
            raise ValueError(f"block_size must be >= 2 for a drafter, got {block_size}")
        layer_ids = target_layer_ids if target_layer_ids is not None else spread_layer_ids(target.num_layers, num_layers)
        tc = target.config
        config = Qwen3Config(
            vocab_size=target.vocab_size,
            hidden_size=target.hidden_size,
            intermediate_size=intermediate_size or tc.intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads),
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
            rms_norm_eps=tc.rms_norm_eps,
            max_position_embeddings=tc.max_position_embeddings,
            rope_parameters=dict(getattr(tc, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}),
            attention_bias=False,
            tie_word_embeddings=False,
            architectures=["DFlashDraftModel"],
            num_target_layers=target.num_layers,
            block_size=block_size,
            dflash_config={
                "target_layer_ids": list(layer_ids),
                "mask_token_id": target.mask_token_id if mask_token_id is None else mask_token_id,
            },
        )
        if seed is not None:
            torch.manual_seed(seed)
        drafter = cls(config)
        drafter.apply(_init_weights)
        return drafter.bind(target)

    def bind(self, target: Target) -> "BlockDrafter":
        """Check that this drafter fits `target`, move it to the target's device/dtype, share its embeddings."""
        c, problems = self.config, []
        if c.hidden_size != target.hidden_size:
            problems.append(f"hidden size {c.hidden_size} != target's {target.hidden_size}")
        if c.num_target_layers != target.num_layers:
            problems.append(f"built for {c.num_target_layers} target layers, target has {target.num_layers}")
        if max(self.target_layer_ids) >= target.num_layers:
            problems.append(f"target_layer_ids {list(self.target_layer_ids)} exceed the target's {target.num_layers} layers")
        if c.vocab_size != target.vocab_size:
            problems.append(f"vocabulary {c.vocab_size} != target's {target.vocab_size}")
        if problems:
            raise ValueError(f"drafter does not match target {target.name!r}: " + "; ".join(problems))
        self._target, self._head = target, None
        return self.to(device=target.device, dtype=target.dtype).eval()  # integer buffers keep their dtype

    def _bound_target(self) -> Target:
        if self._target is None:
            raise RuntimeError("this drafter is not bound to a target: use BlockDrafter.for_target or load_drafter")
        return self._target

    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
        """Write `config.json` and `model.safetensors` (each atomically) into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {
            name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
            for name, t in self.state_dict().items()
        }
        tmp_weights = path / f".{WEIGHTS_FILE}.tmp"
        save_file(weights, str(tmp_weights), metadata={"format": "pt"})
        config = self.config.to_dict()
        config["dtype"] = str(dtype).removeprefix("torch.")
        tmp_config = path / f".{CONFIG_FILE}.tmp"
        tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True))
        os.replace(tmp_weights, path / WEIGHTS_FILE)
        os.replace(tmp_config, path / CONFIG_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path, target: Target | None = None) -> "BlockDrafter":
        """Load a drafter folder (ours or a public DFlash checkpoint); bind it if `target` is given."""
        path = Path(path)
        config_file = path / CONFIG_FILE
        weight_files = sorted(path.glob("*.safetensors"))
        if not config_file.is_file() or not weight_files:
            raise FileNotFoundError(f"{path} is not a drafter folder: needs {CONFIG_FILE} and *.safetensors")
        try:
            config = Qwen3Config.from_dict(json.loads(config_file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"corrupt drafter config {config_file}: {err}") from err
        drafter = cls(config)
        state = {}
        for file in weight_files:
            try:
                state.update(load_file(str(file)))
            except (SafetensorError, OSError) as err:
                raise ValueError(f"corrupt drafter weights {file}: {err}") from err
        result = drafter.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"drafter weights in {path} do not match its config: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return drafter.bind(target) if target is not None else drafter


def spread_layer_ids(num_target_layers: int, count: int) -> list[int]:
    """`count` target layers spread evenly from the second to the fourth-last (DFlash's choice)."""
    if count == 1:
        return [num_target_layers // 2]
    first, last = 1, max(num_target_layers - 3, 1)
    return [round(first + i * (last - first) / (count - 1)) for i in range(count)]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
