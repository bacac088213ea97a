"""The Block Transformer as a vLLM model.

One engine step handles any mix of requests and block phases with a fixed
number of batched operations (no Python loop over tokens or requests):

1. Block decoder: the step's block-ending tokens are gathered with index
   tensors; each one's block embedding is assembled from pieces embedded in
   this step, pieces pending in the request's state, or the virtual pad; all
   blocks run through the block decoder in one pass over vLLM's paged KV.
2. Token decoder: every position it must compute this step is one row (a
   token of an open block, or one of R prefix positions of a block whose
   context was just computed). Rows are grouped into windows (one request's
   one block, <= R+L-1 positions); each layer attends within the window
   over a small buffer seeded from the request's bounded state.

Alignment (see `config.py`): token p has in-block index (p + L - 1) % L and
closes a block when that is L - 1; its hidden state is then the output of
the next block's last prefix position.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.layernorm import LayerNorm
from vllm.model_executor.layers.linear import (ColumnParallelLinear, QKVParallelLinear,
                                               RowParallelLinear)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead,
                                                                 VocabParallelEmbedding)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.sequence import IntermediateTensors

from . import fast_prefill
from .cache import BlockDecoderAttention, TokenDecoderState
from .config import BlockTransformerConfig, index_in_block, num_complete_blocks, padded_index

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class NeoXAttention(nn.Module):
    """GPT-NeoX projections and partial rotary; the attention itself is
    supplied by the decoder (paged over blocks, or local within a block)."""

    def __init__(self, hidden: int, heads: int, rotary_pct: float, rope_theta: float,
                 max_position: int, quant_config: QuantizationConfig | None,
                 prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        self.num_heads = heads // tp
        self.head_dim = hidden // heads
        self.query_key_value = QKVParallelLinear(hidden, self.head_dim, heads, bias=True,
                                                 quant_config=quant_config,
                                                 prefix=f"{prefix}.query_key_value")
        self.dense = RowParallelLinear(hidden, hidden, bias=True, quant_config=quant_config,
                                       prefix=f"{prefix}.dense")
        self.rotary_emb = get_rope(self.head_dim, max_position=max_position,
                                   is_neox_style=True,
                                   rope_parameters={"rope_theta": rope_theta,
                                                    "partial_rotary_factor": rotary_pct})

    def forward(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        qkv, _ = self.query_key_value(x)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.dense(attend(q, k, v))
        return out


class NeoXMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(hidden, intermediate,
                                                  quant_config=quant_config,
                                                  prefix=f"{prefix}.dense_h_to_4h")
        self.dense_4h_to_h = RowParallelLinear(intermediate, hidden, quant_config=quant_config,
                                               prefix=f"{prefix}.dense_4h_to_h")
        self.act = get_act_fn(act)  # "gelu" is the exact (erf) form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.dense_h_to_4h(x)
        x, _ = self.dense_4h_to_h(self.act(x))
        return x


class NeoXLayer(nn.Module):
    def __init__(self, config: BlockTransformerConfig, decoder: str, max_position: int,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        d = config.decoder_params(decoder)
        hidden, eps = d["hidden_size"], d["layer_norm_eps"]
        self.use_parallel_residual = d["use_parallel_residual"]
        self.input_layernorm = LayerNorm(hidden, eps=eps)
        self.post_attention_layernorm = LayerNorm(hidden, eps=eps)
        self.attention = NeoXAttention(hidden, d["num_attention_heads"], d["rotary_pct"],
                                       d["rotary_emb_base"], max_position, quant_config,
                                       prefix=f"{prefix}.attention")
        self.mlp = NeoXMLP(hidden, d["intermediate_size"], d["hidden_act"], quant_config,
                           prefix=f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(x), positions, attend)
        if self.use_parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


class BlockDecoder(nn.Module):
    """GPT-NeoX over block embeddings; rotary position = block index.

    The rotary table covers the engine's `max_model_len`, which a user may
    set past the trained positions (VLLM_ALLOW_LONG_MAX_MODEL_LEN): quality
    there is theirs to judge, but positions past the table would read
    garbage (NaN logits)."""

    def __init__(self, config: BlockTransformerConfig, cache_config: CacheConfig | None,
                 quant_config: QuantizationConfig | None, max_model_len: int,
                 prefix: str) -> None:
        super().__init__()
        max_blocks = max(config.block_max_position_embeddings,
                         num_complete_blocks(max_model_len, config.block_length) + 1)
        self.layers = nn.ModuleList(
            NeoXLayer(config, "block", max_blocks, quant_config,
                      prefix=f"{prefix}.layers.{i}")
            for i in range(config.block_num_hidden_layers))
        for i, layer in enumerate(self.layers):
            att = layer.attention
            att.attn = BlockDecoderAttention(
                att.num_heads, att.head_dim, att.head_dim ** -0.5,
                block_length=config.block_length, cache_config=cache_config,
                prefix=f"{prefix}.layers.{i}.attention.attn")
        self.final_layer_norm = LayerNorm(config.block_hidden_size,
                                          eps=config.block_layer_norm_eps)

    def forward(self, block_emb: torch.Tensor, block_pos: torch.Tensor) -> torch.Tensor:
        x = block_emb
        for layer in self.layers:
            x = layer(x, block_pos, layer.attention.attn)
        return self.final_layer_norm(x)


@dataclass
class StepPlan:
    """Index tensors that map this step's tokens to blocks, rows and windows."""
    block_end: torch.Tensor  # [E] tokens that close a block
    end_req: torch.Tensor  # [E] their requests
    end_block: torch.Tensor  # [E] block index each closes
    piece_src_token: torch.Tensor  # [E, L] step token holding piece k (when in step)
    piece_in_step: torch.Tensor  # [E, L]
    piece_is_pad: torch.Tensor  # [E, L]
    pending_token: torch.Tensor  # tokens of each request's open block after the step
    pending_req: torch.Tensor
    pending_idx: torch.Tensor  # their in-block index
    open_rows: torch.Tensor  # [M_open] open-block tokens fed to the token decoder
    end_has_rows: torch.Tensor | None  # [E] bool: its R prefix rows are computed (None: all)
    row_pos: torch.Tensor  # [M] token-decoder position of each row (0..R+L-2)
    row_win: torch.Tensor  # [M] window of each row
    win_req: torch.Tensor  # [W]
    win_from_state: torch.Tensor  # [W, S] key comes from the stored state
    last_win: torch.Tensor  # [n] each request's open window after the step
    out_token: torch.Tensor  # tokens whose hidden state this step computes
    out_row: torch.Tensor  # the row holding each one's hidden state

    @classmethod
    def build(cls, positions: torch.Tensor, query_start_loc: torch.Tensor,
              block_length: int, prefix_length: int,
              last_windows_only: bool = False) -> "StepPlan":
        """`last_windows_only` keeps just the token-decoder rows of each
        request's open window after the step: they make its stored state and
        hold its last token's hidden state (the one vLLM samples from). The
        other prompt positions' outputs are only needed for prompt logprobs."""
        L, R = block_length, prefix_length
        S = R + L - 1
        dev = positions.device
        T, n = positions.numel(), query_start_loc.numel() - 1
        qlen = query_start_loc[1:] - query_start_loc[:-1]
        req = torch.repeat_interleave(torch.arange(n, device=dev), qlen, output_size=T)
        j = index_in_block(positions, L)
        block = padded_index(positions, L) // L
        ends = j == L - 1
        first, last = query_start_loc[:-1], query_start_loc[1:] - 1
        first_pos = positions[first]

        block_end = ends.nonzero().squeeze(1)
        open_token = (~ends).nonzero().squeeze(1)
        E = block_end.numel()
        back = torch.arange(L - 1, -1, -1, device=dev)  # piece k is L-1-k tokens back
        src_pos = positions[block_end, None] - back
        end_req = req[block_end]
        piece_in_step = src_pos >= first_pos[end_req, None]
        piece_is_pad = src_pos < 0

        # the open block after the step (a fresh one if the last token closed one)
        last_block = block[last] + ends[last].long()
        pend = ~ends & (block == last_block[req])
        pending_token = pend.nonzero().squeeze(1)

        # rows: each open token is one (in its block's window); each closed
        # block gives R prefix positions of the next block's window.
        if last_windows_only:
            open_rows = open_token[block[open_token] == last_block[req[open_token]]]
            end_has_rows = block[block_end] + 1 == last_block[end_req]
            end_rows = block_end[end_has_rows]
        else:
            open_rows, end_has_rows, end_rows = open_token, None, block_end

        # windows: request r covers blocks b_first(r) .. last_block(r), or
        # only its last one
        b_first = block[first]
        win_first = last_block if last_windows_only else b_first
        n_win = last_block - win_first + 1
        win_start = torch.cumsum(n_win, 0) - n_win
        W = int(n_win.sum())
        win_req = torch.repeat_interleave(torch.arange(n, device=dev), n_win, output_size=W)
        win_block = win_first[win_req] + torch.arange(W, device=dev) - win_start[win_req]
        row_req = torch.cat([req[open_rows], req[end_rows].repeat_interleave(R)])
        row_block = torch.cat([block[open_rows], (block[end_rows] + 1).repeat_interleave(R)])
        row_pos = torch.cat([R + j[open_rows], torch.arange(R, device=dev).repeat(len(end_rows))])
        row_win = win_start[row_req] + row_block - win_first[row_req]
        # the first window continues the stored state when the step starts
        # mid-block: its positions before the first new one are cached
        j_first = j[first]
        continues = (win_block == b_first[win_req]) & (j_first[win_req] < L - 1)
        first_new = R + j_first[win_req]
        win_from_state = continues[:, None] & (torch.arange(S, device=dev) < first_new[:, None])

        M_open = open_rows.numel()
        out_token = torch.cat([open_rows, end_rows])
        out_row = torch.cat([torch.arange(M_open, device=dev),
                             M_open + torch.arange(end_rows.numel(), device=dev) * R + R - 1])
        return cls(block_end=block_end, end_req=end_req, end_block=block[block_end],
                   piece_src_token=block_end[:, None] - back, piece_in_step=piece_in_step,
                   piece_is_pad=piece_is_pad, pending_token=pending_token,
                   pending_req=req[pending_token], pending_idx=j[pending_token],
                   open_rows=open_rows, end_has_rows=end_has_rows, row_pos=row_pos,
                   row_win=row_win, win_req=win_req, win_from_state=win_from_state,
                   last_win=win_start + n_win - 1, out_token=out_token, out_row=out_row)


class TokenDecoder(nn.Module):
    """GPT-NeoX over [prefix_1..R, x_0..x_{L-2}] of one block at a time, with
    a bounded per-request state instead of a growing KV cache."""

    def __init__(self, config: BlockTransformerConfig, dtype: torch.dtype,
                 quant_config: QuantizationConfig | None, first_layer_index: int,
                 prefix: str) -> None:
        super().__init__()
        L, R = config.block_length, config.prefix_length
        self.window = R + L - 1
        self.layers = nn.ModuleList(
            NeoXLayer(config, "token", self.window, quant_config,
                      prefix=f"{prefix}.layers.{i}")
            for i in range(config.token_num_hidden_layers))
        self.final_layer_norm = LayerNorm(config.token_hidden_size,
                                          eps=config.token_layer_norm_eps)
        att = self.layers[0].attention
        shapes = [(2, self.window, att.num_heads, att.head_dim),
                  (max(L - 1, 1), config.embedder_hidden_size)]
        # KV-layer names need one integer each, distinct from the block decoder's
        self.states = nn.ModuleList(
            TokenDecoderState(shapes, dtype, prefix=f"{prefix}.state.{first_layer_index + i}")
            for i in range(config.token_num_hidden_layers))

    def forward(self, x: torch.Tensor, plan: StepPlan, attn_metadata: dict) -> torch.Tensor:
        # row m sees the keys of its window up to its own position
        key_pos = torch.arange(self.window, device=x.device)
        visible = (key_pos[None, :] <= plan.row_pos[:, None])[:, None, None, :]  # [M,1,1,S]
        for layer, state in zip(self.layers, self.states):
            slot = attn_metadata[state.prefix].state_slot  # this layer's own group
            stored = state.kv_cache[0]  # [pages, 2, S, heads, head_dim]
            buf = stored[slot[plan.win_req]]
            buf = torch.where(plan.win_from_state[:, None, :, None, None], buf, 0)
            num_heads, head_dim = buf.shape[-2:]

            def attend(q, k, v, buf=buf):
                M = q.shape[0]
                buf[plan.row_win, 0, plan.row_pos] = k.view(M, num_heads, head_dim)
                buf[plan.row_win, 1, plan.row_pos] = v.view(M, num_heads, head_dim)
                kv = buf[plan.row_win].transpose(2, 3)  # [M, 2, heads, S, head_dim]
                out = F.scaled_dot_product_attention(
                    q.view(M, num_heads, 1, head_dim), kv[:, 0], kv[:, 1], attn_mask=visible)
                return out.reshape(M, num_heads * head_dim)

            x = layer(x, plan.row_pos, attend)
            stored[slot] = buf[plan.last_win]
        return x


class BlockTransformerForCausalLM(nn.Module):
    """vLLM model of a Block Transformer checkpoint made by `vllm-block convert`."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: BlockTransformerConfig = vllm_config.model_config.hf_config
        self.config = config
        self.L, self.R = config.block_length, config.prefix_length
        # see fast_prefill.py: prompt positions' outputs are not needed
        self.last_windows_only = fast_prefill.enabled(vllm_config)
        dtype = vllm_config.model_config.dtype
        quant_config = vllm_config.quant_config
        self.embedder = VocabParallelEmbedding(config.vocab_size, config.embedder_hidden_size,
                                               prefix=f"{prefix}embedder")
        self.block_decoder = BlockDecoder(config, vllm_config.cache_config, quant_config,
                                          vllm_config.model_config.max_model_len,
                                          prefix=f"{prefix}block_decoder")
        self.expansion = ColumnParallelLinear(config.block_hidden_size,
                                              self.R * config.token_hidden_size, bias=True,
                                              gather_output=True, quant_config=quant_config,
                                              prefix=f"{prefix}expansion")
        self.token_embed = VocabParallelEmbedding(config.vocab_size, config.token_hidden_size,
                                                  prefix=f"{prefix}token_embed")
        self.token_decoder = TokenDecoder(config, dtype, quant_config,
                                          config.block_num_hidden_layers,
                                          prefix=f"{prefix}token_decoder")
        self.lm_head = ParallelLMHead(config.vocab_size, config.token_hidden_size,
                                      bias=False, quant_config=quant_config,
                                      prefix=f"{prefix}lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    @classmethod
    def get_mamba_state_copy_funcs(cls, mamba_types):
        """Prefix caching (align mode) snapshots whole token-decoder states."""
        from vllm.model_executor.layers.mamba.mamba_utils import get_temporal_copy_spec
        return {t: (get_temporal_copy_spec, get_temporal_copy_spec) for t in mamba_types}

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embed(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        attn_metadata = get_forward_context().attn_metadata
        states = self.token_decoder.states
        hidden_size = self.config.token_hidden_size
        out = torch.zeros(input_ids.shape[0], hidden_size, dtype=self.lm_head.weight.dtype,
                          device=input_ids.device)
        if not isinstance(attn_metadata, dict) or states[0].prefix not in attn_metadata:
            return out  # profiling / warm-up run: no requests, no caches
        meta = attn_metadata[states[0].prefix]
        T = int(meta.query_start_loc[-1])  # tokens beyond T are padding
        ids, pos = input_ids[:T], positions[:T].long()
        # vLLM validates token ids only when it has a tokenizer; never let an
        # out-of-vocabulary id take the engine down (it reads as padding).
        vocab = self.config.vocab_size
        ids = torch.where((ids >= 0) & (ids < vocab), ids, self.config.pad_token_id)
        L, R = self.L, self.R
        plan = StepPlan.build(pos, meta.query_start_loc, L, R, self.last_windows_only)

        # 1. block decoder on the blocks this step completes
        pieces = self.embedder(ids)  # [T, D_block / L]
        pending = states[0].kv_cache[1]  # [pages, max(L-1, 1), D_block / L]
        slot0 = meta.state_slot
        E = plan.block_end.numel()
        if E:
            emb = pieces[plan.piece_src_token.clamp(min=0)]  # [E, L, D/L]
            if L > 1:
                pad = self.embedder(ids.new_full((1,), self.config.pad_token_id))
                stored = pending[slot0[plan.end_req]]  # [E, L-1, D/L]; piece L-1 is in step
                stored = torch.cat([stored, stored[:, :1]], 1)
                emb = torch.where(plan.piece_in_step[..., None], emb,
                                  torch.where(plan.piece_is_pad[..., None], pad, stored))
            ctx = self.block_decoder(emb.reshape(E, -1), plan.end_block)
            if plan.end_has_rows is not None:
                ctx = ctx[plan.end_has_rows]
            prefix_rows = self.expansion(ctx)[0].reshape(ctx.shape[0] * R, hidden_size)
        else:
            prefix_rows = pieces.new_empty(0, hidden_size)
        if L > 1 and plan.pending_token.numel():
            pending[slot0[plan.pending_req], plan.pending_idx] = pieces[plan.pending_token]

        # 2. token decoder on the step's rows
        rows = torch.cat([self.token_embed(ids[plan.open_rows]), prefix_rows])
        rows = self.token_decoder(rows, plan, attn_metadata)
        out[plan.out_token] = self.token_decoder.final_layer_norm(rows[plan.out_row])
        return out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        from .reference import checkpoint_shapes

        expected = checkpoint_shapes(self.config)  # full shapes, before TP sharding
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, weight in weights:
            if name not in params:
                raise ValueError(f"unexpected weight {name!r} in checkpoint (is it a "
                                 f"directory written by `vllm-block convert`?)")
            if weight.shape != expected[name]:
                raise ValueError(f"shape mismatch for {name}: the checkpoint has "
                                 f"{tuple(weight.shape)}, config.json implies "
                                 f"{tuple(expected[name])}")
            param = params[name]
            if ".query_key_value." in name:
                # GPT-NeoX fuses q/k/v per head ([heads, 3, head_dim]); vLLM's
                # QKVParallelLinear wants [3, heads, head_dim], sharded by heads.
                heads = self._heads_of(name)
                parts = weight.unflatten(0, (heads, 3, -1)).unbind(1)
                for shard, part in zip(("q", "k", "v"), parts):
                    param.weight_loader(param, part.flatten(0, 1), shard)
            else:
                getattr(param, "weight_loader", default_weight_loader)(param, weight)
            loaded.add(name)
        missing = sorted(set(expected) - loaded)
        if missing:
            raise ValueError(f"checkpoint misses {len(missing)} weight(s), e.g. {missing[0]!r}")
        return loaded

    def _heads_of(self, name: str) -> int:
        decoder = "block" if name.startswith("block_decoder.") else "token"
        return self.config.decoder_params(decoder)["num_attention_heads"]
