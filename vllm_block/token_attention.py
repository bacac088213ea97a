"""The token decoder's attention: within one block's window, over a bounded
per-request state instead of a growing KV cache.

Each token-decoder layer's `TokenWindowAttention` is a weightless `MambaBase`
layer: it declares its state as a `MambaSpec` (so vLLM allocates, frees,
copies for prefix caching and recomputes it), reads its own metadata by its
prefix (`attn_metadata[self.prefix]`, as vLLM's Mamba layers do), gathers its
windows, writes the step's K/V, attends (window_attention.py) and writes its
state back, all in `forward`.

State per request and layer: `kv_cache[0]` [2, lead+L-1, heads, head_dim] (K
and V of the window's lead positions and the open block's tokens),
`kv_cache[1]` [max(L-1, 1), D_block / L] (the open block's embedding pieces)
and, for "summation", `kv_cache[2]` [max(L-1, 1), token hidden] (the open
block's expansion vectors 1..L-1, added to its tokens' inputs). Only the
first layer's pieces and addends are read and written (`stored_pieces`...):
vLLM groups cache layers by identical specs and sizes every group alike, so
giving the pieces to one layer only would split that layer into a group of
its own and cost far more than the unused pieces (which fit in the padding
of a state page up to an attention page).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm.config import VllmConfig, get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport,
                                       AttentionMetadataBuilder, CommonAttentionMetadata)
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
from vllm.v1.attention.backends.utils import mamba_get_block_table_tensor
from vllm.v1.kv_cache_interface import MambaSpec

from .planner import StepPlanner, graph_support, planner_of
from .step_plan import DecodePlan, StepPlan
from .window_attention import (attends_per_window, decode_attention, decode_visibility,
                               gather_windows, row_attention, store_windows,
                               window_attention, write_rows)


@dataclass
class TokenStateMetadata:
    state_slot: torch.Tensor  # [num_reqs] page holding each request's state
    plan: StepPlan | None  # the exact step's plan (planner.py) ...
    decode: DecodePlan | None = None  # ... or the static plan of a uniform decode step


def step_metadata(prefix: str) -> TokenStateMetadata | None:
    """Layer `prefix`'s metadata for this step; None in vLLM's profile and
    warm-up runs, which carry none."""
    attn_metadata = get_forward_context().attn_metadata
    if not isinstance(attn_metadata, dict):
        return None
    return attn_metadata.get(prefix)


class TokenStateBuilder(AttentionMetadataBuilder[TokenStateMetadata]):
    """Each request's state slot, and the step's plan from the planner."""

    def __init__(self, kv_cache_spec: MambaSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.planner: StepPlanner = planner_of(vllm_config, layer_names)
        self.slot_buffer: torch.Tensor | None = None  # made at the first static step

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        return graph_support(vllm_config, AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE)

    def build(self, common_prefix_len: int, common: CommonAttentionMetadata,
              fast_build: bool = False) -> TokenStateMetadata:
        n = common.num_reqs
        step = self.planner.plan(common, self.device)
        slot = mamba_get_block_table_tensor(
            common.block_table_tensor, common.seq_lens, self.kv_cache_spec,
            self.vllm_config.cache_config.mamba_cache_mode)[:n, 0]
        if not step.static:
            return TokenStateMetadata(slot.long(), step.device)
        if self.slot_buffer is None:  # persistent: graph replays read its address
            self.slot_buffer = torch.zeros(self.planner.decode_capacity, dtype=torch.long,
                                           device=self.device)
        state_slot = self.slot_buffer[:n]
        state_slot.copy_(slot)
        if self.planner.mode.compile_decode:  # one compiled graph for every batch size
            torch._dynamo.maybe_mark_dynamic(state_slot, 0)
        return TokenStateMetadata(state_slot, None, step.device)


class TokenStateBackend(AttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "BLOCK_TRANSFORMER_TOKEN_STATE"

    @staticmethod
    def get_impl_cls():
        raise NotImplementedError("TokenWindowAttention computes its own attention")

    @staticmethod
    def get_builder_cls():
        return TokenStateBuilder

    @classmethod
    def is_ssm(cls) -> bool:
        return True


class TokenWindowAttention(nn.Module, MambaBase):
    """One token-decoder layer's attention within block windows, and the
    per-request state it keeps between steps."""

    def __init__(self, num_heads: int, head_dim: int, *, window: int,
                 pieces_shape: tuple[int, int], addends_shape: tuple[int, int] | None,
                 dtype: torch.dtype, planner: StepPlanner, prefix: str) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.window = num_heads, head_dim, window
        self.shapes = [(2, window, num_heads, head_dim), pieces_shape]
        if addends_shape is not None:  # "summation": kv_cache[2]
            self.shapes.append(addends_shape)
        self.dtypes = (dtype,) * len(self.shapes)
        self.planner = planner  # the metadata builder's source of the step's plan
        self.prefix = prefix
        ctx = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in ctx:
            raise ValueError(f"duplicate layer name {prefix}")
        ctx[prefix] = self
        self.kv_cache = (torch.tensor([]),)

    def metadata(self) -> TokenStateMetadata:
        return get_forward_context().attn_metadata[self.prefix]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [rows, heads * head_dim] in the step plan's row layout."""
        meta = self.metadata()
        q, k, v = (t.view(t.shape[0], self.num_heads, self.head_dim) for t in (q, k, v))
        if meta.decode is not None:
            out = self._static(q, k, v, meta.decode, meta.state_slot)
        else:
            out = self._exact(q, k, v, meta.plan, meta.state_slot)
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)

    def _exact(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: StepPlan,
               slot: torch.Tensor) -> torch.Tensor:
        stored = self.kv_cache[0]  # [pages, 2, S, heads, head_dim]
        windows = gather_windows(stored, slot[plan.win_req], plan.blank_cells)
        write_rows(windows, plan.row_cell, k, v, self.window)
        buf = windows.view(-1, *stored.shape[1:])  # [W, 2, S, heads, head_dim]
        if attends_per_window(len(plan.row_pos), len(plan.win_req), self.window):
            out = window_attention(q, buf, plan.row_win, plan.row_pos)
        else:
            out = row_attention(q, buf, plan.row_win, plan.row_hidden)
        store_windows(stored, slot, windows, plan.last_win)
        return out

    def _static(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: DecodePlan,
                slot: torch.Tensor) -> torch.Tensor:
        """[B * R] rows, one window per request (+ a scratch column S)."""
        stored, S = self.kv_cache[0], self.window
        B, R = plan.row_pos.shape
        window = stored[slot]  # [B, 2, S, heads, head_dim]
        buf = torch.cat([window, window[:, :, :1]], 2)
        buf = torch.where((plan.from_state != 0)[:, None, :, None, None], buf, 0)
        req = torch.arange(B, device=q.device)[:, None]
        buf[req, 0, plan.kv_col] = k.view(B, R, self.num_heads, self.head_dim)
        buf[req, 1, plan.kv_col] = v.view(B, R, self.num_heads, self.head_dim)
        out = decode_attention(q.view(B, R, self.num_heads, self.head_dim), buf,
                               decode_visibility(plan.row_pos, S))
        stored[slot] = buf[:, :, :S]
        return out

    def stored_pieces(self, request: torch.Tensor | None = None) -> torch.Tensor:
        """The open block's stored embedding pieces of each request listed
        (all of the step's when None): [n, max(L-1, 1), D_block / L]."""
        slot = self.metadata().state_slot
        return self.kv_cache[1][slot if request is None else slot[request]]

    def store_pieces(self, request: torch.Tensor | None, index: torch.Tensor,
                     pieces: torch.Tensor) -> None:
        slot = self.metadata().state_slot
        self.kv_cache[1][slot if request is None else slot[request], index] = pieces

    def stored_addends(self, request: torch.Tensor | None = None) -> torch.Tensor:
        """"summation": the expansion vectors 1..L-1 of each listed request's
        open block, [n, max(L-1, 1), token hidden] (all of the step's when None)."""
        slot = self.metadata().state_slot
        return self.kv_cache[2][slot if request is None else slot[request]]

    def store_addends(self, request: torch.Tensor | None, addends: torch.Tensor) -> None:
        slot = self.metadata().state_slot
        self.kv_cache[2][slot if request is None else slot[request]] = addends

    # -- the state's declaration (MambaBase) --------------------------------
    def get_state_shape(self) -> list[tuple[int, ...]]:
        return self.shapes

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return self.dtypes

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.LINEAR  # a label: selects the copy funcs

    def get_attn_backend(self) -> type[AttentionBackend]:
        return TokenStateBackend

    def get_kv_cache_spec(self, vllm_config: VllmConfig) -> MambaSpec:
        cc = vllm_config.cache_config
        # Without IsHybrid nobody sets mamba_block_size for 'none' mode; in
        # 'align' mode snapshot the state once per attention page.
        if cc.mamba_cache_mode == "align":
            block_size = cc.block_size
        else:
            block_size = cc.mamba_block_size or vllm_config.model_config.max_model_len
        return MambaSpec(shapes=tuple(self.shapes), dtypes=self.dtypes,
                         block_size=block_size, page_size_padded=cc.mamba_page_size_padded,
                         mamba_type=self.mamba_type, mamba_cache_mode=cc.mamba_cache_mode)
