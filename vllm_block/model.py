"""The Block Transformer as a vLLM model.

One engine step handles any mix of requests and block phases with a fixed
number of batched operations (no Python loop over tokens or requests), read
from a step plan built on the host (`step_plan.py`):

1. Block decoder: the step's block-ending tokens are gathered with index
   tensors; each one's block embedding is assembled from pieces embedded in
   this step, pieces pending in the request's state, or the virtual pad; all
   blocks run through the block decoder in one pass over vLLM's paged KV.
2. Token decoder: every position it must compute this step is one row (a
   token of an open block, or one of R prefix positions of a block whose
   context was just computed). Rows are grouped into windows (one request's
   one block, <= R+L-1 positions); each layer attends within the window
   over a small buffer seeded from the request's bounded state.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

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
from .config import BlockTransformerConfig, num_complete_blocks
from .step_mode import StepMode
from .step_plan import DecodePlan, StepPlan, worst_case_plan

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


def window_attention(q: torch.Tensor, buf: torch.Tensor, row_win: torch.Tensor,
                     row_pos: torch.Tensor) -> torch.Tensor:
    """Rows' attention within their windows, each window attended as a whole:
    q [M, heads, head_dim] is placed at (row_win, row_pos) of a [W, S] grid
    and attends causally over buf ([W, 2, S, heads, head_dim], K and V)."""
    W, _, S, num_heads, head_dim = buf.shape
    queries = q.new_zeros(W, S, num_heads, head_dim)
    queries[row_win, row_pos] = q
    keys, values = buf.transpose(2, 3).unbind(1)  # [W, heads, S, head_dim]
    out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys, values, is_causal=True)
    return out.transpose(1, 2)[row_win, row_pos]  # [M, heads, head_dim]


def row_attention(q: torch.Tensor, buf: torch.Tensor, row_win: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
    """The same, row by row: each row with a copy of its window and a mask
    `visible` ([M, 1, 1, S]: keys up to the row's position)."""
    M, num_heads, head_dim = q.shape
    kv = buf[row_win].transpose(2, 3)  # [M, 2, heads, S, head_dim]
    out = F.scaled_dot_product_attention(q.view(M, num_heads, 1, head_dim), kv[:, 0],
                                         kv[:, 1], attn_mask=visible)
    return out.view(M, num_heads, head_dim)


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

    def forward(self, x: torch.Tensor, plan: StepPlan, slots: list[torch.Tensor],
                windows: list[torch.Tensor]) -> torch.Tensor:
        """Rows of any layout (`plan`); `windows[i]` is layer i's stored state
        ([pages, 2, S, heads, head_dim]) and `slots[i]` each request's page.
        A row sees its window up to its own position."""
        S = self.window
        num_rows, num_windows = len(plan.row_pos), len(plan.win_req)  # host sizes
        # Prefill-like steps fill their windows: attend per window, causally
        # (2-4x faster on CPU, no window copy per row). Decode-like steps have
        # about one row per window: attend per row (1.5-2.7x faster there).
        # (benchmarks/window_attention.py)
        per_window = 2 * num_rows >= num_windows * S
        if not per_window:
            key_pos = torch.arange(S, device=x.device)
            visible = (key_pos[None, :] <= plan.row_pos[:, None])[:, None, None, :]  # [M,1,1,S]
        for layer, slot, stored in zip(self.layers, slots, windows):
            buf = stored[slot[plan.win_req]]
            buf = torch.where(plan.win_from_state[:, None, :, None, None], buf, 0)
            num_heads, head_dim = buf.shape[-2:]

            def attend(q, k, v, buf=buf):
                M = q.shape[0]
                buf[plan.row_win, 0, plan.row_pos] = k.view(M, num_heads, head_dim)
                buf[plan.row_win, 1, plan.row_pos] = v.view(M, num_heads, head_dim)
                q = q.view(M, num_heads, head_dim)
                if per_window:
                    out = window_attention(q, buf, plan.row_win, plan.row_pos)
                else:
                    out = row_attention(q, buf, plan.row_win, visible)
                return out.reshape(M, num_heads * head_dim)

            x = layer(x, plan.row_pos, attend)
            stored[slot] = buf[plan.last_win]
        return x

    def forward_decode(self, x: torch.Tensor, plan: DecodePlan, slots: list[torch.Tensor],
                       windows: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The static layout: x is [B * R, hidden], R rows per request, one
        window per request, attended as a whole (no copy of it per row).
        Returns the rows and each layer's new window ([B, 2, S, heads,
        head_dim]), which the caller stores: the states share one buffer, and
        a compiled graph may not write into aliased inputs."""
        B, R = plan.row_pos.shape
        S = self.window
        key_col = torch.arange(S + 1, device=x.device)
        # [B, 1, R, S+1]: a row sees its window up to its own position, never
        # the scratch column S that spare rows write to
        visible = ((key_col <= plan.row_pos[..., None]) & (key_col < S))[:, None]
        from_state = (plan.from_state != 0)[:, None, :, None, None]  # [B, 1, S+1, 1, 1]
        req = torch.arange(B, device=x.device)[:, None]
        positions = plan.row_pos.reshape(-1)
        new_windows = []
        for layer, slot, stored in zip(self.layers, slots, windows):
            num_heads, head_dim = stored.shape[-2:]
            window = stored[slot]  # [B, 2, S, heads, head_dim]
            buf = torch.cat([window, window[:, :, :1]], 2)  # + scratch column
            buf = torch.where(from_state, buf, 0)

            def attend(q, k, v, buf=buf):
                buf[req, 0, plan.kv_col] = k.view(B, R, num_heads, head_dim)
                buf[req, 1, plan.kv_col] = v.view(B, R, num_heads, head_dim)
                keys, values = buf.transpose(2, 3).unbind(1)  # [B, heads, S+1, head_dim]
                out = F.scaled_dot_product_attention(
                    q.view(B, R, num_heads, head_dim).transpose(1, 2), keys, values,
                    attn_mask=visible)  # [B, heads, R, head_dim]
                return out.transpose(1, 2).reshape(B * R, num_heads * head_dim)

            x = layer(x, positions, attend)
            new_windows.append(buf[:, :, :S])
        return x, new_windows


class BlockTransformerForCausalLM(nn.Module):
    """vLLM model of a Block Transformer checkpoint made by `vllm-block convert`."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: BlockTransformerConfig = vllm_config.model_config.hf_config
        self.config = config
        self.L, self.R = config.block_length, config.prefix_length
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
        self.step_mode = StepMode.of(vllm_config)
        self.profile_shape = (vllm_config.scheduler_config.max_num_seqs,
                              fast_prefill.enabled(vllm_config))
        self.pad_piece: torch.Tensor | None = None  # the virtual pad's embedding piece
        # the static decode step, compiled where the step mode says so
        self.decode_step = self._decode_step
        if self.step_mode.compile_decode:  # with the inductor options vLLM's platform set
            options = dict(vllm_config.compilation_config.inductor_compile_config)
            compiled = torch.compile(self._decode_step, dynamic=True, fullgraph=True,
                                     options=options)

            def decode_step(ids, plan, slots, windows, pending):
                # vLLM's compile settings make shapes static by default: mark
                # the batch dynamic (one graph for all B > 1, compiled at the
                # first step of that kind: the caches' strides are known then)
                for t in (ids, *vars(plan).values(), *slots, *windows, pending):
                    torch._dynamo.maybe_mark_dynamic(t, 0)
                return compiled(ids, plan, slots, windows, pending)

            self.decode_step = decode_step
        self.profiled: tuple[int, int] | None = None  # (rows, blocks) of the last profile

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
        if not isinstance(attn_metadata, dict) or states[0].prefix not in attn_metadata:
            return self._profile_step(input_ids)  # vLLM's profile / warm-up run
        meta = attn_metadata[states[0].prefix]
        slots = [attn_metadata[s.prefix].state_slot for s in states]  # each layer's group
        windows = [s.kv_cache[0] for s in states]
        pending = states[0].kv_cache[1]
        # vLLM validates token ids only when it has a tokenizer; never let an
        # out-of-vocabulary id take the engine down (it reads as padding).
        ids = torch.where((input_ids >= 0) & (input_ids < self.config.vocab_size),
                          input_ids, self.config.pad_token_id)
        if meta.decode is None:
            return self._mixed_step(ids, meta.plan, slots, windows, pending)
        hidden, piece, new_windows = self.decode_step(ids, meta.decode, slots, windows, pending)
        self._store_decode_state(meta.decode, slots, windows, pending, piece, new_windows)
        return hidden

    def _mixed_step(self, input_ids: torch.Tensor, plan: StepPlan, slots: list[torch.Tensor],
                    windows: list[torch.Tensor], pending: torch.Tensor) -> torch.Tensor:
        """Any step, on exactly the rows its host-built plan lists."""
        hidden_size, L = self.config.token_hidden_size, self.L
        ids = input_ids[:plan.num_tokens]  # tokens beyond are padding
        # every row vLLM reads is written (padding rows are never read)
        out = torch.empty(input_ids.shape[0], hidden_size, dtype=self.lm_head.weight.dtype,
                          device=input_ids.device)

        # 1. block decoder on the blocks this step completes
        pieces = self.embedder(ids)  # [T, D_block / L]
        slot0 = slots[0]
        E = plan.num_blocks
        if E:
            emb = pieces[plan.piece_src_token]  # [E, L, D/L]
            if L > 1:
                stored = pending[slot0[plan.end_req]]  # [E, L-1, D/L]; piece L-1 is in step
                stored = torch.cat([stored, stored[:, :1]], 1)
                emb = torch.where(plan.piece_in_step[..., None], emb,
                                  torch.where(plan.piece_is_pad[..., None], self._pad(), stored))
            ctx = self.block_decoder(emb.reshape(E, -1), plan.end_block)
            if not plan.all_ends_have_rows:
                ctx = ctx[plan.end_with_rows]
            prefix_rows = self.expansion(ctx)[0].reshape(-1, hidden_size)
        else:
            prefix_rows = pieces.new_empty(0, hidden_size)
        if L > 1 and len(plan.pending_token):
            pending[slot0[plan.pending_req], plan.pending_idx] = pieces[plan.pending_token]

        # 2. token decoder on the step's rows
        rows = torch.cat([self.token_embed(ids[plan.open_rows]), prefix_rows])
        rows = self.token_decoder(rows, plan, slots, windows)
        out[plan.out_token] = self.token_decoder.final_layer_norm(rows[plan.out_row])
        return out

    def _decode_step(self, ids: torch.Tensor, plan: DecodePlan, slots: list[torch.Tensor],
                     windows: list[torch.Tensor], pending: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """A uniform single-token decode step whose every shape is a function
        of the batch size B (see DecodePlan): the block decoder runs all B
        rows (K/V stored only for closing tokens), the token decoder B x R.
        Pure but for the block decoder's paged KV: returns the hidden states
        [B, hidden], each request's pending piece and new windows, which
        `_store_decode_state` writes."""
        L, R, hidden_size = self.L, self.R, self.config.token_hidden_size
        B = plan.closes.shape[0]
        ids = ids[:B]
        closes = plan.closes != 0
        pieces = self.embedder(ids)  # [B, D_block / L]
        if L > 1:
            stored = pending[slots[0]]  # [B, L-1, D/L]: pieces 0..L-2 of the open block
            emb = torch.cat([stored, pieces[:, None]], 1)
            req = torch.arange(B, device=ids.device)
            # an open block's token is stored; a closing one rewrites what is there
            piece = torch.where(closes[:, None], stored[req, plan.pending_idx], pieces)
        else:
            emb = piece = pieces[:, None]
        emb = torch.where(plan.piece_is_pad[..., None] != 0, self._pad(), emb)
        ctx = self.block_decoder(emb.reshape(B, -1), plan.block_pos)
        prefix_rows = self.expansion(ctx)[0].view(B, R, hidden_size)
        rows = torch.where(closes[:, None, None], prefix_rows,
                           self.token_embed(ids)[:, None, :])
        rows, new_windows = self.token_decoder.forward_decode(
            rows.view(B * R, hidden_size), plan, slots, windows)
        return self.token_decoder.final_layer_norm(rows[plan.out_row]), piece, new_windows

    def _store_decode_state(self, plan: DecodePlan, slots: list[torch.Tensor],
                            windows: list[torch.Tensor], pending: torch.Tensor,
                            piece: torch.Tensor, new_windows: list[torch.Tensor]) -> None:
        if self.L > 1:
            pending[slots[0], plan.pending_idx] = piece
        for stored, slot, new in zip(windows, slots, new_windows):
            stored[slot] = new

    def _profile_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """vLLM's profile and warm-up runs call forward with no metadata
        before it sizes the KV cache: run the heaviest step this engine can
        schedule (worst_case_plan for this many tokens) on scratch state, so
        the memory vLLM measures includes its activations."""
        T, device = input_ids.shape[0], input_ids.device
        max_num_seqs, fast = self.profile_shape
        plan = worst_case_plan(T, max_num_seqs, self.L, self.R, fast)
        n = int(plan.last_win.shape[0])
        windows = [torch.zeros((1, *s.shapes[0]), dtype=s.dtypes[0], device=device)
                   for s in self.token_decoder.states]
        state = self.token_decoder.states[0]
        pending = torch.zeros((1, *state.shapes[1]), dtype=state.dtypes[1], device=device)
        slots = [torch.zeros(n, dtype=torch.long, device=device)] * len(windows)
        ids = torch.zeros_like(input_ids)
        out = self._mixed_step(ids, plan.to(device), slots, windows, pending)
        self.profiled = (len(plan.row_pos), plan.num_blocks)
        return out.zero_()

    def _pad(self) -> torch.Tensor:
        """The virtual pad token's embedding piece, computed once."""
        if self.pad_piece is None:
            pad = torch.tensor([self.config.pad_token_id], device=self.embedder.weight.device)
            self.pad_piece = self.embedder(pad)[0]
        return self.pad_piece

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
        self.pad_piece = None  # recomputed from the loaded embedder
        missing = sorted(set(expected) - loaded)
        if missing:
            raise ValueError(f"checkpoint misses {len(missing)} weight(s), e.g. {missing[0]!r}")
        return loaded

    def _heads_of(self, name: str) -> int:
        decoder = "block" if name.startswith("block_decoder.") else "token"
        return self.config.decoder_params(decoder)["num_attention_heads"]
