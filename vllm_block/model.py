"""The Block Transformer as a vLLM model.

One engine step, any mix of requests and block phases, a fixed number of
batched operations read from the step's plan (step_plan.py, built on the host
by planner.py before the forward):

1. Block decoder (block_decoder.py): each block the step closes gets its
   embedding from pieces embedded in this step, pieces pending in the
   request's state, or the virtual pad; all run in one pass over vLLM's
   paged KV (block_attention.py).
2. Token decoder (token_decoder.py): every position it computes this step is
   one row (a token of an open block, or one of R prefix positions of a block
   whose context was just computed); each layer attends within the row's
   block window over the request's bounded state (token_attention.py).

Two forwards: the *exact step* runs any batch on exactly the rows its plan
lists; the *static step* runs uniform decode batches in a fixed [B] / [B, R]
layout (what CUDA graphs capture and torch.compile compiles; step_mode.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ColumnParallelLinear, ReplicatedLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead,
                                                                 VocabParallelEmbedding)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.sequence import IntermediateTensors

from .block_decoder import BlockDecoder
from .config import BlockTransformerConfig
from .logits import FloatLogits
from .planner import StepPlanner
from .profile_run import worst_case_step
from .step_mode import compile_static_step
from .step_plan import DecodePlan, StepPlan
from .token_attention import step_metadata
from .token_decoder import TokenDecoder


class BlockTransformerForCausalLM(nn.Module):
    """vLLM model of a Block Transformer checkpoint made by `vllm-block convert`."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: BlockTransformerConfig = vllm_config.model_config.hf_config
        self.config = config
        self.L, self.R = config.block_length, config.prefix_length
        quant_config = vllm_config.quant_config
        # the step's plan, handed to every cache layer's metadata builder
        self.planner = StepPlanner(vllm_config)
        self.embedder = VocabParallelEmbedding(config.vocab_size, config.embedder_hidden_size,
                                               prefix=f"{prefix}embedder")
        # "projection_layer": a block's L pieces, concatenated, through a
        # linear layer with bias (the original Conv1d, kernel = stride = L)
        self.embed_projection = ReplicatedLinear(
            self.L * config.embedder_hidden_size, config.block_hidden_size, bias=True,
            quant_config=quant_config, prefix=f"{prefix}embed_projection",
        ) if config.embedder_projection == "projection_layer" else None
        self.block_decoder = BlockDecoder(config, vllm_config.cache_config, quant_config,
                                          vllm_config.model_config.max_model_len,
                                          self.planner, prefix=f"{prefix}block_decoder")
        self.expansion = ColumnParallelLinear(config.block_hidden_size,
                                              self.R * config.token_hidden_size, bias=True,
                                              gather_output=True, quant_config=quant_config,
                                              prefix=f"{prefix}expansion")
        self.token_embed = VocabParallelEmbedding(config.vocab_size, config.token_hidden_size,
                                                  prefix=f"{prefix}token_embed")
        self.token_decoder = TokenDecoder(config, vllm_config.model_config.dtype, quant_config,
                                          self.planner, config.block_num_hidden_layers,
                                          prefix=f"{prefix}token_decoder")
        self.lm_head = ParallelLMHead(config.vocab_size, config.token_hidden_size,
                                      bias=False, quant_config=quant_config,
                                      prefix=f"{prefix}lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)
        # float32 logits of up to max_num_seqs rows, kept from step to step
        self.float_logits = FloatLogits(
            vllm_config.scheduler_config.max_num_seqs,
            config.vocab_size * vllm_config.model_config.dtype.itemsize,
            vllm_config.device_config.device_type)
        self.pad_piece: torch.Tensor | None = None  # the virtual pad's embedding piece
        self.summation = config.decoding_strategy == "summation"
        self.start_embedding: torch.Tensor | None = None  # "summation"'s start token
        self.decode_step = self._static_forward
        if self.planner.mode.compile_decode:
            self.decode_step = compile_static_step(self._static_forward, vllm_config)
        self.profiled: tuple[int, int] | None = None  # (rows, blocks) of the last profile

    def get_mamba_state_copy_funcs(self, mamba_types):
        """Prefix caching (align mode) snapshots whole token-decoder states:
        every state tensor (window, pieces, and "summation"'s addends)."""
        from vllm.model_executor.layers.mamba.mamba_utils import get_temporal_copy_spec
        num_states = len(self.token_decoder.pieces.shapes)
        return {t: (get_temporal_copy_spec,) * num_states for t in mamba_types}

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embed(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        meta = step_metadata(self.token_decoder.pieces.prefix)
        if meta is None:
            return self.profile_run(input_ids)
        # vLLM validates token ids only when it has a tokenizer; never let an
        # out-of-vocabulary id take the engine down (it reads as padding).
        ids = torch.where((input_ids >= 0) & (input_ids < self.config.vocab_size),
                          input_ids, self.config.pad_token_id)
        if meta.decode is not None:
            return self.static_step(ids, meta.decode)
        return self.exact_step(ids, meta.plan)

    # -- the exact step ------------------------------------------------------
    def exact_step(self, input_ids: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """Any step, on exactly the rows its host-built plan lists."""
        ids = input_ids[:plan.num_tokens]  # tokens beyond are padding
        # tokens without a row have no context (block 0 of a request with
        # fewer than L - 1 pads): hidden state 0, i.e. zero logits
        out = torch.zeros(input_ids.shape[0], self.config.token_hidden_size,
                          dtype=self.lm_head.weight.dtype, device=input_ids.device)
        pieces = self.embedder(ids)  # [T, D_block / L]
        expanded = self._exact_expanded(pieces, plan)  # [E', R, hidden]
        if self.L > 1 and len(plan.pending_token):
            self.token_decoder.pieces.store_pieces(plan.pending_req, plan.pending_idx,
                                                   pieces[plan.pending_token])
        rows = torch.cat([self._exact_open_inputs(ids, expanded, plan),
                          self._lead_inputs(expanded).flatten(0, 1)])
        if self.summation and self.L > 1 and len(plan.addend_end):
            self.token_decoder.pieces.store_addends(plan.addend_req,
                                                    expanded[plan.addend_end, 1:])
        out[plan.out_token] = self.token_decoder(rows, plan.row_pos, plan.out_row)
        return out

    def _lead_inputs(self, expanded: torch.Tensor) -> torch.Tensor:
        """[n, R, hidden] expansions -> [n, lead, hidden] token-decoder inputs
        before a block's first token: the R prefix vectors ("prefix"), or the
        start token's embedding + vector 0 ("summation")."""
        if self.summation:
            return expanded[:, :1] + self._start()
        return expanded

    def _exact_open_inputs(self, ids: torch.Tensor, expanded: torch.Tensor,
                           plan: StepPlan) -> torch.Tensor:
        """Inputs of the open tokens' rows: their embeddings, plus for
        "summation" expansion vector j+1 of their block's context (computed
        this step, or stored when that block opened in an earlier one)."""
        x = self.token_embed(ids[plan.open_rows])
        num_open = len(plan.open_rows)
        if not self.summation or not num_open:
            return x
        j = plan.row_pos[:num_open] - 1  # in-block index
        request = plan.win_req[plan.row_win[:num_open]]
        rows = torch.arange(num_open, device=x.device)
        addend = self.token_decoder.pieces.stored_addends(request)[rows, j]
        if len(expanded):
            fresh = expanded[plan.open_opener.clamp(min=0), j + 1]
            addend = torch.where((plan.open_opener >= 0)[:, None], fresh, addend)
        return x + addend

    def _exact_expanded(self, pieces: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """The block decoder on the blocks the step closes, expanded: [E', R,
        hidden] for the closed blocks whose next block's rows are computed."""
        hidden_size, num_blocks = self.config.token_hidden_size, plan.num_blocks
        if not num_blocks:
            return pieces.new_empty(0, self.R, hidden_size)
        emb = pieces[plan.piece_src_token]  # [E, L, D/L]
        if self.L > 1:  # piece L-1 is always in the step
            stored = self.token_decoder.pieces.stored_pieces(plan.end_req)  # [E, L-1, D/L]
            stored = torch.cat([stored, stored[:, :1]], 1)
            emb = torch.where(plan.piece_in_step[..., None], emb,
                              torch.where(plan.piece_is_pad[..., None], self._pad(), stored))
        ctx = self.block_decoder(self._block_embedding(emb), plan.end_block)
        if not plan.all_ends_have_rows:
            ctx = ctx[plan.end_with_rows]
        return self.expansion(ctx)[0].view(len(ctx), self.R, hidden_size)

    # -- the static step -----------------------------------------------------
    def static_step(self, ids: torch.Tensor, plan: DecodePlan) -> torch.Tensor:
        """A uniform single-token decode step whose every shape is a function
        of the batch size B (see DecodePlan). The open blocks' pieces are read
        and written here, outside `decode_step` (compiled on CPU where the step
        mode says so): they share storage with the first layer's window
        state, and a compiled graph may not mutate one of two aliased inputs."""
        owner = self.token_decoder.pieces
        stored = owner.stored_pieces() if self.L > 1 else None  # [B, L-1, D/L]
        addends = owner.stored_addends() if self.summation and self.L > 1 else None
        hidden, piece, addends = self.decode_step(ids, plan, stored, addends)
        if self.L > 1:
            owner.store_pieces(None, plan.pending_idx, piece)
        if addends is not None:
            owner.store_addends(None, addends)
        return hidden

    def _static_forward(self, ids: torch.Tensor, plan: DecodePlan, stored: torch.Tensor | None,
                        addends: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The block decoder runs all B rows (K/V stored only for closing
        tokens), the token decoder B x lead. Returns the hidden states [B,
        hidden] and each request's piece (and "summation" addends) to store."""
        hidden_size = self.config.token_hidden_size
        B = plan.closes.shape[0]
        ids = ids[:B]
        closes = plan.closes != 0
        emb, piece = self._static_block_embeddings(self.embedder(ids), plan, closes, stored)
        ctx = self.block_decoder(self._block_embedding(emb), plan.block_pos)
        expanded = self.expansion(ctx)[0].view(B, self.R, hidden_size)
        x = self.token_embed(ids)[:, None, :]
        if addends is not None:  # "summation": vector j+1 of the open block's context
            x = x + addends[torch.arange(B, device=x.device), plan.pending_idx][:, None]
            addends = torch.where(closes[:, None, None], expanded[:, 1:], addends)
        rows = torch.where(closes[:, None, None], self._lead_inputs(expanded), x)
        hidden = self.token_decoder(rows.view(-1, hidden_size), plan.row_pos.reshape(-1),
                                    plan.out_row)
        # a token of block 0 without context (see step_plan.py): zero logits
        return torch.where(plan.has_context[:, None] != 0, hidden, 0), piece, addends

    def _static_block_embeddings(self, pieces: torch.Tensor, plan: DecodePlan,
                                 closes: torch.Tensor, stored: torch.Tensor | None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, D/L]: each request's block embedding with this step's piece
        last, and the piece to store: this step's (an open block's token) or
        the one already there (a closing token rewrites it)."""
        if stored is None:  # L == 1: a block is one token
            emb = piece = pieces[:, None]
        else:
            emb = torch.cat([stored, pieces[:, None]], 1)
            req = torch.arange(pieces.shape[0], device=pieces.device)
            piece = torch.where(closes[:, None], stored[req, plan.pending_idx], pieces)
        return torch.where(plan.piece_is_pad[..., None] != 0, self._pad(), emb), piece

    # -- vLLM's profile run, helpers, weights ----------------------------------
    def profile_run(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The step vLLM measures before sizing the KV cache (profile_run.py)."""
        with worst_case_step(self.planner, self.token_decoder.windows, input_ids.shape[0],
                             input_ids.device) as plan:
            out = self.exact_step(torch.zeros_like(input_ids), plan)
        self.profiled = (len(plan.row_pos), plan.num_blocks)
        return out.zero_()

    def _block_embedding(self, pieces: torch.Tensor) -> torch.Tensor:
        """[blocks, L, D_embed] pieces -> [blocks, D_block] block embeddings:
        concatenated, then projected for the "projection_layer" embedder."""
        emb = pieces.flatten(1)
        if self.embed_projection is None:
            return emb
        return self.embed_projection(emb)[0]

    def _pad(self) -> torch.Tensor:
        """The virtual pad token's embedding piece, computed once."""
        if self.pad_piece is None:
            pad = torch.tensor([self.config.pad_token_id], device=self.embedder.weight.device)
            self.pad_piece = self.embedder(pad)[0]
        return self.pad_piece

    def _start(self) -> torch.Tensor:
        """"summation": the start token's token-decoder embedding (the input
        before a block's first token, with expansion vector 0), computed once."""
        if self.start_embedding is None:
            start = torch.tensor([self.config.bos_token_id],
                                 device=self.token_embed.weight.device)
            self.start_embedding = self.token_embed(start)[0]
        return self.start_embedding

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.float_logits(partial(self.logits_processor, self.lm_head), hidden_states)

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
            self._load_weight(name, params[name], weight)
            loaded.add(name)
        self.pad_piece = self.start_embedding = None  # recomputed from the loaded weights
        missing = sorted(set(expected) - loaded)
        if missing:
            raise ValueError(f"checkpoint misses {len(missing)} weight(s), e.g. {missing[0]!r}")
        return loaded

    def _load_weight(self, name: str, param: nn.Parameter, weight: torch.Tensor) -> None:
        if ".query_key_value." in name:
            # GPT-NeoX fuses q/k/v per head ([heads, 3, head_dim]); vLLM's
            # QKVParallelLinear wants [3, heads, head_dim], sharded by heads.
            decoder = "block" if name.startswith("block_decoder.") else "token"
            heads = self.config.decoder_dims(decoder).num_heads
            parts = weight.unflatten(0, (heads, 3, -1)).unbind(1)
            for shard, part in zip(("q", "k", "v"), parts):
                param.weight_loader(param, part.flatten(0, 1), shard)
        else:
            getattr(param, "weight_loader", default_weight_loader)(param, weight)
