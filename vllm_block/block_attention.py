"""The block decoder's attention on vLLM's paged KV cache: one entry per block.

The layer declares `tokens_per_state = L`, so vLLM's allocator, block tables,
prefix-cache hashing and preemption manage pages that cover `block_size`
tokens but hold `block_size / L` entries. vLLM still computes attention
metadata per scheduled token, so the platform's backend is wrapped: its
builder turns the step's plan (planner.py) into block-level metadata (one
query per block row, sequence lengths in blocks, one slot per block) and its
impl writes K/V with those slots. The behaviour lives in two top-level mixins;
`block_attention_backend` makes the thin subclass of each platform class that
vLLM's `subclass_attention_backend_with_overrides` needs.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport,
                                       CommonAttentionMetadata, MultipleOf,
                                       subclass_attention_backend_with_overrides)
from vllm.v1.attention.selector import get_attn_backend
from vllm.v1.kv_cache_interface import AttentionSpec

from .config import num_block_positions
from .planner import StepPlanner, graph_support, planner_of
from .step_plan import BlockQueries, upload

# Entries per page the paged-attention kernels accept: the CPU kernel needs a
# multiple of 16 (32+ takes its faster paths), FlashAttention a multiple of 16.
KERNEL_ENTRIES_PER_PAGE = 16


def default_block_size(block_length: int) -> int:
    """Page size in tokens: >= 96 tokens and a multiple of 32 entries."""
    return 32 * block_length * max(1, 4 // block_length)


def check_block_size(block_size: int, block_length: int) -> None:
    """The page rule: pages of `block_size` tokens must hold a kernel-friendly
    number of block entries."""
    multiple = KERNEL_ENTRIES_PER_PAGE * block_length
    if block_size % multiple:
        raise ValueError(
            f"block_size {block_size} does not work with this model's block_length "
            f"{block_length}: pages must hold a multiple of {KERNEL_ENTRIES_PER_PAGE} block "
            f"entries, so block_size must be a multiple of {multiple} (e.g. "
            f"{default_block_size(block_length)}), or leave it unset")


class BlockLevelBuilder:
    """Mixin over a platform's metadata builder: block-level metadata from
    the step's plan. `block_length` is set by the generated subclass."""
    block_length: int
    # The fast path splices token-level tables into cached metadata.
    supports_update_block_table = False

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        L = self.block_length
        assert kv_cache_spec.tokens_per_state == L, kv_cache_spec
        # The kernel sees pages of block_size / L entries, one per block.
        entry_spec = replace(kv_cache_spec, block_size=kv_cache_spec.block_size // L,
                             tokens_per_state=1)
        super().__init__(entry_spec, layer_names, vllm_config, device)
        self.entries_per_page = entry_spec.block_size
        self.planner: StepPlanner = planner_of(vllm_config, layer_names)
        self.static_buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        base = super().get_cudagraph_support(vllm_config, kv_cache_spec)
        return graph_support(vllm_config, base)

    def build(self, common_prefix_len: int, common: CommonAttentionMetadata,
              fast_build: bool = False):
        step = self.planner.plan(common, self.device)
        if step.static:
            return self._build_static(common, step.blocks, fast_build)
        return self._build_exact(common, step.blocks, fast_build)

    def _build_exact(self, common: CommonAttentionMetadata, blocks: BlockQueries,
                     fast_build: bool):
        """One query per block the step closes."""
        query_start_loc = torch.from_numpy(blocks.query_start_loc)
        seq_lens = torch.from_numpy(blocks.seq_lens)
        block_common = common.replace(
            query_start_loc=upload(query_start_loc, common.query_start_loc.device),
            query_start_loc_cpu=query_start_loc,
            seq_lens=upload(seq_lens, common.seq_lens.device),
            seq_lens_cpu_upper_bound=seq_lens,
            num_actual_tokens=len(blocks.block),
            max_query_len=blocks.max_query_len,
            max_seq_len=int(blocks.seq_lens.max(initial=0)),
            slot_mapping=self._slots(common.block_table_tensor, blocks),
            positions=None)
        return super().build(0, block_common, fast_build)

    def _build_static(self, common: CommonAttentionMetadata, blocks: BlockQueries,
                      fast_build: bool):
        """Static decode: one block query per request (vLLM's padded requests
        have no blocks); a token that closes no block attends over its
        request's blocks and stores nothing (slot -1). Sequence lengths and
        slots live in persistent buffers (graph replays)."""
        n = common.num_reqs
        seq_buf, slot_buf = self._static_buffers()
        seq_lens = torch.from_numpy(blocks.seq_lens)
        seq_buf[:n].copy_(upload(seq_lens, seq_buf.device))
        slot_buf[:n] = self._slots(common.block_table_tensor[:n], blocks)
        block_common = common.replace(
            seq_lens=seq_buf[:n], seq_lens_cpu_upper_bound=seq_lens,
            max_seq_len=int(blocks.seq_lens.max(initial=0)),
            slot_mapping=slot_buf[:n], positions=None)
        return super().build(0, block_common, fast_build)

    def _slots(self, block_table: torch.Tensor, blocks: BlockQueries) -> torch.Tensor:
        """Paged slot of each block row's entry (-1: the row stores nothing)."""
        per_page = self.entries_per_page
        host = np.stack([blocks.request, blocks.block, blocks.writes]).astype(np.int64)
        request, block, writes = upload(torch.from_numpy(host), block_table.device)
        slots = block_table[request, block // per_page].long() * per_page + block % per_page
        return torch.where(writes != 0, slots, -1)

    def _static_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.static_buffers is None:
            capacity = self.planner.decode_capacity
            self.static_buffers = (
                torch.zeros(capacity, dtype=torch.int32, device=self.device),
                torch.full((capacity,), -1, dtype=torch.long, device=self.device))
        return self.static_buffers

    def build_for_cudagraph_capture(self, common: CommonAttentionMetadata):
        # the longest sequence, in blocks, that a captured step attends over
        max_blocks = num_block_positions(self.vllm_config.model_config.max_model_len,
                                         self.block_length)
        return self.build(0, common.replace(max_seq_len=max_blocks))


class BlockLevelImpl:
    """Mixin over a platform's attention impl: K/V written per block."""

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        # The runner's slot mapping is per token; write per block instead.
        if attn_metadata is not None and key is not None and value is not None:
            self.do_kv_cache_update(layer, key, value, kv_cache, attn_metadata.slot_mapping)
        return super().forward(layer, query, key, value, kv_cache, attn_metadata,
                               output, output_scale, output_block_scale)


@functools.lru_cache
def block_attention_backend(underlying: type[AttentionBackend],
                            block_length: int) -> type[AttentionBackend]:
    """The platform's attention backend, attending over block entries."""
    name = f"BlockTransformerL{block_length}_"
    base_builder, base_impl = underlying.get_builder_cls(), underlying.get_impl_cls()
    builder = type(name + base_builder.__name__, (BlockLevelBuilder, base_builder),
                   {"block_length": block_length})
    impl = type(name + base_impl.__name__, (BlockLevelImpl, base_impl), {})

    def kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(KERNEL_ENTRIES_PER_PAGE * block_length)]

    return subclass_attention_backend_with_overrides(
        name_prefix=name,
        attention_backend_cls=underlying,
        overrides={
            "get_builder_cls": staticmethod(lambda: builder),
            "get_impl_cls": staticmethod(lambda: impl),
            "forward_includes_kv_cache_update": True,
            "get_supported_kernel_block_sizes": staticmethod(kernel_block_sizes),
        },
    )


def platform_backend(head_size: int, dtype: torch.dtype,
                     kv_cache_dtype: str) -> tuple[type[AttentionBackend], int]:
    """The platform's paged-attention backend for the block decoder and the
    head size its kernel runs: `head_size`, or the smallest larger one it
    takes when it does not take `head_size` (small models: the CPU kernel
    starts at 32). Refuses a head size larger than every one it takes."""
    underlying = get_attn_backend(head_size, dtype, kv_cache_dtype)
    supported = underlying.get_supported_head_sizes()
    if not supported or head_size in supported:
        return underlying, head_size
    larger = [h for h in supported if h > head_size]
    if not larger:
        raise ValueError(
            f"the block decoder's head size {head_size} (block_hidden_size / "
            f"block_num_attention_heads) is not supported by this platform's attention "
            f"backend {underlying.get_name()} (head sizes {supported})")
    return get_attn_backend(min(larger), dtype, kv_cache_dtype), min(larger)


class BlockDecoderAttention(Attention):
    """Paged attention over block entries: one KV entry per `block_length`
    tokens. Called with the q/k/v of the step's block rows only.

    A head size the platform's kernel does not take is zero-padded to one it
    does (`platform_backend`): zero query and key dims add nothing to the
    scores, which keep the model's scale, and zero value dims give zero
    outputs, which are dropped; the KV cache holds the padded heads."""

    def __init__(self, num_heads: int, head_size: int, *, block_length: int, cache_config,
                 planner: StepPlanner, prefix: str) -> None:
        self.block_length = block_length
        kv_cache_dtype = cache_config.cache_dtype if cache_config else "auto"
        underlying, kernel_head_size = platform_backend(head_size, torch.get_default_dtype(),
                                                        kv_cache_dtype)
        super().__init__(num_heads, kernel_head_size, head_size ** -0.5,
                         cache_config=cache_config, prefix=prefix,
                         attn_backend=block_attention_backend(underlying, block_length))
        self.model_head_size = head_size
        self.planner = planner  # the metadata builder's source of the step's plan

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                *args, **kwargs) -> torch.Tensor:
        """q, k, v: [rows, heads * model head size]."""
        pad = self.head_size - self.model_head_size
        if not pad:
            return super().forward(query, key, value, *args, **kwargs)
        query, key, value = (F.pad(t.view(len(t), -1, self.model_head_size), (0, pad))
                             .flatten(1) for t in (query, key, value))
        out = super().forward(query, key, value, *args, **kwargs)
        return out.view(len(out), -1, self.head_size)[..., :self.model_head_size].flatten(1)

    def get_kv_cache_spec(self, vllm_config: VllmConfig):
        spec = super().get_kv_cache_spec(vllm_config)
        assert isinstance(spec, AttentionSpec)
        check_block_size(spec.block_size, self.block_length)
        return replace(spec, tokens_per_state=self.block_length)
