"""Plain-PyTorch Block Transformer: the oracle, the trainer, the HF peer.

Kept simple and exact on purpose: the vLLM model is tested against it, and
it is the "Hugging Face transformers" column of the benchmarks.

Layout of a block (serving alignment, see `config.py`): `num_pad` virtual
pad tokens precede the input (L-1 for "pad" models, so token 0 closes block
0; 0 for "nopad" models, or enough to complete one block for a prompt
shorter than L), and the sequence is cut into blocks of L tokens. The block
decoder turns each block into one context vector; the token decoder predicts
the tokens of block b from block b-1's context expanded into R vectors:
as R prefix positions before block b's tokens ("prefix"), or added to the
token inputs [start, x_0 .. x_{L-2}] one per position ("summation").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .config import BlockTransformerConfig, num_complete_blocks

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: K, V [B, H, S, Dh]


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, base: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [..., rotary_dim] for GPT-NeoX rotate-half rotary."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32,
                                            device=positions.device) / rotary_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x [B, H, T, Dh] (rotate-half)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


class NeoXAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, rotary_dim: int, base: float):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.rotary_dim, self.base = rotary_dim, base
        self.query_key_value = nn.Linear(hidden, 3 * hidden)  # [H, 3, Dh] layout
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, _ = x.shape
        qkv = self.query_key_value(x).view(B, T, self.heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)  # [B, H, T, Dh]
        cos, sin = rotary_cos_sin(positions, self.rotary_dim, self.base, x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        S = k.shape[2]
        # new token t (at cache index S-T+t) sees cache entries 0..S-T+t
        mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dense(out.transpose(1, 2).reshape(B, T, -1)), (k, v)


class NeoXMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, intermediate)
        self.dense_4h_to_h = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))  # exact (erf) gelu


class NeoXLayer(nn.Module):
    def __init__(self, cfg: BlockTransformerConfig, name: str):
        super().__init__()
        d = cfg.decoder_params(name)
        self.parallel = d["use_parallel_residual"]
        self.input_layernorm = nn.LayerNorm(d["hidden_size"], eps=d["layer_norm_eps"])
        self.post_attention_layernorm = nn.LayerNorm(d["hidden_size"],
                                                     eps=d["layer_norm_eps"])
        self.attention = NeoXAttention(d["hidden_size"], d["num_attention_heads"],
                                       cfg.decoder_rotary_dim(name), d["rotary_emb_base"])
        self.mlp = NeoXMLP(d["hidden_size"], d["intermediate_size"])

    def forward(self, x, positions, past):
        attn, kv = self.attention(self.input_layernorm(x), positions, past)
        if self.parallel:
            return x + attn + self.mlp(self.post_attention_layernorm(x)), kv
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class NeoXDecoder(nn.Module):
    """GPT-NeoX layers + final layer norm, with an optional K/V cache."""

    def __init__(self, cfg: BlockTransformerConfig, name: str):
        super().__init__()
        d = cfg.decoder_params(name)
        self.layers = nn.ModuleList(NeoXLayer(cfg, name)
                                    for _ in range(d["num_hidden_layers"]))
        self.final_layer_norm = nn.LayerNorm(d["hidden_size"], eps=d["layer_norm_eps"])

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, positions, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.final_layer_norm(x), new_cache


@dataclass
class GenerationState:
    """Caches of an incremental generation (all rows share one phase)."""
    block_cache: KVCache  # one entry per complete block
    context: torch.Tensor  # [B, Db] block decoder output of the last block
    token_cache: KVCache  # lead + tokens of the current block: <= lead+L-1
    block_tokens: torch.Tensor  # [B, n] tokens of the current (open) block
    num_blocks: int
    logits: torch.Tensor  # [B, V] distribution of the next token
    expanded: torch.Tensor | None = None  # [B, R, Ht] expansion of `context`
    token_cache_lengths: list[int] = field(default_factory=list)  # for tests


class BlockTransformerForCausalLM(PreTrainedModel):
    config_class = BlockTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["NeoXLayer"]

    def __init__(self, config: BlockTransformerConfig):
        super().__init__(config)
        L, R = config.block_length, config.prefix_length
        self.L, self.R, self.lead = L, R, config.token_lead_length
        self.summation = config.decoding_strategy == "summation"
        self.embedder = nn.Embedding(config.vocab_size, config.embedder_hidden_size)
        if config.embedder_projection == "projection_layer":
            self.embed_projection = nn.Linear(L * config.embedder_hidden_size,
                                              config.block_hidden_size)
        self.block_decoder = NeoXDecoder(config, "block")
        self.expansion = nn.Linear(config.block_hidden_size, R * config.token_hidden_size)
        self.token_embed = nn.Embedding(config.vocab_size, config.token_hidden_size)
        self.token_decoder = NeoXDecoder(config, "token")
        self.lm_head = nn.Linear(config.token_hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def get_input_embeddings(self) -> nn.Module:
        return self.token_embed

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    # -- pieces ------------------------------------------------------------
    def check_token_ids(self, input_ids: torch.Tensor) -> None:
        V = self.config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= V):
            bad = input_ids[(input_ids < 0) | (input_ids >= V)][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {V})")

    def block_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, n*L] token ids -> [B, n, Db]: each block's pieces, concatenated
        (then linearly projected, for the "projection_layer" embedder)."""
        pieces = self.embedder(ids).reshape(ids.shape[0], -1, self.L * self.embedder.embedding_dim)
        if self.config.embedder_projection == "projection_layer":
            return self.embed_projection(pieces)
        return pieces

    def expand(self, context: torch.Tensor) -> torch.Tensor:
        """[..., Db] block context -> [..., R, Ht]: the prefix vectors
        ("prefix") or the per-position addends ("summation")."""
        return self.expansion(context).unflatten(-1, (self.R, -1))

    def lead_inputs(self, expanded: torch.Tensor) -> torch.Tensor:
        """[B, R, Ht] -> [B, lead, Ht]: the token-decoder inputs before the
        block's first token (the prefix, or start token + vector 0)."""
        if self.summation:
            start = self.token_embed.weight[self.config.bos_token_id]
            return expanded[:, :1] + start
        return expanded

    def token_inputs(self, expanded: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Inputs for tokens `ids` [B, n] at in-block indices start..start+n-1
        (token i feeds local position lead + i)."""
        x = self.token_embed(ids)
        if self.summation:
            x = x + expanded[:, start + 1:start + 1 + ids.shape[1]]
        return x

    def _positions(self, start: int, length: int, batch: int) -> torch.Tensor:
        return torch.arange(start, start + length, device=self.device).expand(batch, -1)

    # -- full forward -------------------------------------------------------
    def raw_forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The original `forward()`: [B, n*L] ids (blocks start at 0, no padding)
        -> logits [B, n-1, L, V] for every token of blocks 1..n-1."""
        B, T = input_ids.shape
        L = self.L
        if T % L:
            raise ValueError(f"raw_forward needs whole blocks: length {T} is not a "
                             f"multiple of block_length {L}")
        self.check_token_ids(input_ids)
        n = T // L
        ctx, _ = self.block_decoder(self.block_embeddings(input_ids),
                                    self._positions(0, n, B))
        # token decoder of block b in 1..n-1: [lead(ctx_{b-1}), x_0 .. x_{L-2}]
        expanded = self.expand(ctx[:, :-1]).flatten(0, 1)  # [B*(n-1), R, Ht]
        tokens = input_ids.view(B, n, L)[:, 1:, :-1].flatten(0, 1)  # [B*(n-1), L-1]
        x = torch.cat([self.lead_inputs(expanded), self.token_inputs(expanded, tokens, 0)], 1)
        h, _ = self.token_decoder(x, self._positions(0, self.lead + L - 1, x.shape[0]))
        return self.lm_head(h[:, self.lead - 1:]).view(B, n - 1, L, -1)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                num_virtual_pad: int | None = None, **kwargs) -> CausalLMOutput:
        """logits[:, t] is the distribution of token t+1 given tokens 0..t,
        under the serving alignment: `num_virtual_pad` pad tokens first (by
        default the model's rule for a prompt of T tokens). A token in the
        first block (padded index < L) has no context to be predicted from:
        its logits are 0 (uniform) and it is left out of the loss."""
        B, T = input_ids.shape
        L = self.L
        if T == 0:
            raise ValueError("input_ids is empty: at least one token is needed")
        self.check_token_ids(input_ids)
        p = self.config.virtual_pad(T) if num_virtual_pad is None else num_virtual_pad
        # padded sequence, extended with pad so the block of token T (the next
        # one) is whole; predictions only look left, so the filler is unseen.
        n = num_complete_blocks(T, L, p) + 1
        pad = self.config.pad_token_id
        padded = torch.full((B, n * L), pad, dtype=input_ids.dtype, device=input_ids.device)
        padded[:, p:p + T] = input_ids
        # raw_forward predicts padded indices L..nL-1; token t+1 is index p+t+1.
        raw = self.raw_forward(padded).flatten(1, 2)
        logits = torch.cat([raw.new_zeros(B, L, raw.shape[-1]), raw], 1)[:, p + 1:p + 1 + T]
        loss = None
        if labels is not None:
            targets = labels[:, 1:].clone()
            targets[:, :max(0, L - 1 - p)] = -100  # no context: nothing to learn
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                   targets.flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    # -- incremental decoding ----------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor,
                num_virtual_pad: int | None = None) -> GenerationState:
        """Build both caches for prompts [B, T] of equal length in one pass each
        (`num_virtual_pad`: as in `forward`, fixed for the whole request)."""
        B, T = input_ids.shape
        L = self.L
        if T == 0:
            raise ValueError("input_ids is empty: at least one token is needed")
        self.check_token_ids(input_ids)
        p = self.config.virtual_pad(T) if num_virtual_pad is None else num_virtual_pad
        nb = num_complete_blocks(T, L, p)
        if nb == 0:
            raise ValueError(f"{p} virtual pad tokens and {T} tokens leave no complete "
                             f"block to condition on (block_length {L})")
        pad = self.config.pad_token_id
        padded = torch.cat([input_ids.new_full((B, p), pad), input_ids], dim=1)
        ctx, block_cache = self.block_decoder(self.block_embeddings(padded[:, :nb * L]),
                                              self._positions(0, nb, B))
        state = GenerationState(block_cache, ctx[:, -1], [], padded[:, nb * L:], nb,
                                logits=None)
        self._start_block(state)
        return state

    def _start_block(self, state: GenerationState) -> None:
        """Restart the token cache from the last context, then feed the open
        block's tokens; its last output predicts the next token."""
        B = state.context.shape[0]
        state.expanded = self.expand(state.context)
        x = torch.cat([self.lead_inputs(state.expanded),
                       self.token_inputs(state.expanded, state.block_tokens, 0)], 1)
        h, state.token_cache = self.token_decoder(x, self._positions(0, x.shape[1], B))
        state.logits = self.lm_head(h[:, -1])
        state.token_cache_lengths.append(state.token_cache[0][0].shape[2])

    @torch.no_grad()
    def step(self, state: GenerationState, next_ids: torch.Tensor) -> GenerationState:
        """Append one token per row [B]; only the new token is computed."""
        self.check_token_ids(next_ids)
        L = self.L
        j = state.block_tokens.shape[1]  # in-block index of the new token
        state.block_tokens = torch.cat([state.block_tokens, next_ids[:, None]], 1)
        if j == L - 1:  # the token closes a block: one block-decoder step
            ctx, state.block_cache = self.block_decoder(
                self.block_embeddings(state.block_tokens),
                self._positions(state.num_blocks, 1, len(next_ids)), state.block_cache)
            state.context, state.num_blocks = ctx[:, -1], state.num_blocks + 1
            state.block_tokens = state.block_tokens[:, :0]
            self._start_block(state)
            return state
        x = self.token_inputs(state.expanded, next_ids[:, None], j)
        h, state.token_cache = self.token_decoder(
            x, self._positions(self.lead + j, 1, len(next_ids)), state.token_cache)
        state.logits = self.lm_head(h[:, -1])
        state.token_cache_lengths.append(state.token_cache[0][0].shape[2])
        return state

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 16,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None,
                 output_logits: bool = False, num_virtual_pad: int | None = None):
        """Cached generation for prompts of equal length [B, T].

        Returns the [B, T + new] ids, and with `output_logits` also the
        [B, new, V] logits each new token was drawn from. Rows that produced
        `eos_token_id` keep producing it (no ragged outputs).
        """
        state = self.prefill(input_ids, num_virtual_pad)
        out, all_logits = [input_ids], []
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            logits = state.logits.float()
            all_logits.append(logits)
            nxt = sample(logits, do_sample, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, eos_token_id, nxt)
                done |= nxt == eos_token_id
            out.append(nxt[:, None])
            if i + 1 < max_new_tokens and not (eos_token_id is not None and done.all()):
                self.step(state, nxt)
            elif eos_token_id is not None and done.all():
                break
        ids = torch.cat(out, 1)
        return (ids, torch.stack(all_logits, 1)) if output_logits else ids


def checkpoint_shapes(config: BlockTransformerConfig) -> dict[str, torch.Size]:
    """Name -> shape of every weight a checkpoint of `config` holds (the
    layout `vllm-block convert` writes and the vLLM model loads)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in BlockTransformerForCausalLM(config).state_dict().items()}


def sample(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy, or temperature / top-k / top-p sampling, over [B, V] logits."""
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token crossing p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
