"""vLLM glue for the two caches of a Block Transformer.

Block decoder: one paged KV entry per block of L tokens. The layer declares
`tokens_per_state = L`, so vLLM's allocator, block tables, prefix-cache
hashing and preemption manage pages that cover `block_size` tokens but hold
`block_size / L` entries. vLLM still computes attention metadata per
scheduled token, so the platform's backend is wrapped: its builder turns
token-level metadata into block-level metadata (one query per completed
block, sequence lengths in blocks, one slot per block) and its impl writes
K/V with those block-level slots.

Token decoder: a fixed-size per-request state (the current block's
prefix/token K/V and the pending block-embedding pieces), declared as a
`MambaSpec` by one weightless `MambaBase` layer per token-decoder layer, so
vLLM allocates, frees, copies (prefix caching) and recomputes it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from vllm.config import VllmConfig, get_current_vllm_config
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport,
                                       AttentionMetadataBuilder,
                                       CommonAttentionMetadata, MultipleOf,
                                       subclass_attention_backend_with_overrides)
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
from vllm.v1.attention.backends.utils import mamba_get_block_table_tensor
from vllm.v1.attention.selector import get_attn_backend
from vllm.v1.kv_cache_interface import AttentionSpec, MambaSpec

from . import fast_prefill
from .config import num_complete_blocks
from .step_mode import StepMode
from .step_plan import (DecodePlan, DecodePlanBuffer, StepPlan, device_step_plan,
                        host_decode_plan, is_uniform_decode, upload)


def decode_batch_capacity(vllm_config: VllmConfig) -> int:
    """Most requests one decode step can hold (persistent buffers' size)."""
    cc = vllm_config.compilation_config
    return max(vllm_config.scheduler_config.max_num_seqs, cc.max_cudagraph_capture_size or 0)


def static_decode_step(static_decode: bool, cm: CommonAttentionMetadata) -> bool:
    """Whether this step runs the static decode forward (both builders must
    agree): the step mode allows it and every request has one new token."""
    return static_decode and is_uniform_decode(cm.query_start_loc_cpu[:cm.num_reqs + 1].numpy())


def graph_support(vllm_config: VllmConfig, base: AttentionCGSupport) -> AttentionCGSupport:
    """Uniform single-token decode steps are static (and capturable) only
    when the step mode runs them on the static plan."""
    if not StepMode.of(vllm_config).static_decode:
        return AttentionCGSupport.NEVER
    return min(base, AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE, key=lambda s: s.value)

# Entries per page the paged-attention kernels accept: the CPU kernel needs a
# multiple of 16 (32+ takes its faster paths), FlashAttention a multiple of 16.
KERNEL_ENTRIES_PER_PAGE = 16


def block_size_ok(block_size: int, block_length: int) -> bool:
    """Whether pages of `block_size` tokens hold a kernel-friendly number of
    block entries."""
    return block_size % (KERNEL_ENTRIES_PER_PAGE * block_length) == 0


def default_block_size(block_length: int) -> int:
    """Page size in tokens: >= 96 tokens and a multiple of 32 entries."""
    return 32 * block_length * max(1, 4 // block_length)


# ---------------------------------------------------------------------------
# Block decoder: block-level paged attention
# ---------------------------------------------------------------------------
@functools.lru_cache
def make_block_attention_backend(underlying: type[AttentionBackend],
                                 block_length: int) -> type[AttentionBackend]:
    """Wrap the platform's attention backend so it attends over blocks."""
    L = block_length
    base_builder = underlying.get_builder_cls()
    base_impl = underlying.get_impl_cls()

    class BlockLevelBuilder(base_builder):  # type: ignore[valid-type,misc]
        # The fast path splices token-level tables into cached metadata.
        supports_update_block_table = False

        def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                     vllm_config: VllmConfig, device: torch.device):
            assert kv_cache_spec.tokens_per_state == L, kv_cache_spec
            # The kernel sees pages of block_size / L entries, one per block.
            entry_spec = replace(kv_cache_spec, block_size=kv_cache_spec.block_size // L,
                                 tokens_per_state=1)
            super().__init__(entry_spec, layer_names, vllm_config, device)
            self.entries_per_page = entry_spec.block_size
            self.static_decode = StepMode.of(vllm_config).static_decode
            self.prefix_length = vllm_config.model_config.hf_config.prefix_length
            self.decode_bufs: tuple[torch.Tensor, torch.Tensor] | None = None

        @classmethod
        def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
            return graph_support(vllm_config,
                                 base_builder.get_cudagraph_support(vllm_config, kv_cache_spec))

        def build(self, common_prefix_len: int, cm: CommonAttentionMetadata,
                  fast_build: bool = False):
            if static_decode_step(self.static_decode, cm):
                return self._build_decode(cm, fast_build)
            n = cm.num_reqs
            qsl = cm.query_start_loc_cpu[:n + 1].long()
            seq = cm.seq_lens_cpu_upper_bound[:n].long()
            blocks_before = num_complete_blocks(seq - (qsl[1:] - qsl[:-1]), L)
            blocks_after = num_complete_blocks(seq, L)
            new_blocks = blocks_after - blocks_before  # block-ending tokens per request
            block_qsl = torch.zeros(n + 1, dtype=torch.long)
            torch.cumsum(new_blocks, 0, out=block_qsl[1:])
            total = int(block_qsl[-1])
            req = torch.repeat_interleave(torch.arange(n), new_blocks, output_size=total)
            block_idx = torch.arange(total) - block_qsl[req] + blocks_before[req]
            spp = self.entries_per_page
            device = cm.block_table_tensor.device
            req_d, block_d = upload(req, device), upload(block_idx, device)
            pages = cm.block_table_tensor[req_d, block_d // spp].long()
            slots = pages * spp + block_d % spp
            block_cm = cm.replace(
                query_start_loc=upload(block_qsl.int(), cm.query_start_loc.device),
                query_start_loc_cpu=block_qsl.int(),
                seq_lens=upload(blocks_after.int(), cm.seq_lens.device),
                seq_lens_cpu_upper_bound=blocks_after.int(),
                num_actual_tokens=total,
                max_query_len=int(new_blocks.max()) if n else 0,
                max_seq_len=int(blocks_after.max()) if n else 0,
                slot_mapping=slots,
                positions=None)
            return super().build(0, block_cm, fast_build)

        def _build_decode(self, cm: CommonAttentionMetadata, fast_build: bool):
            """Static decode: one block query per request (vLLM's padded
            requests have none); a token that closes no block attends over
            its request's blocks and stores nothing (slot -1). Sequence
            lengths and slots live in persistent buffers (graph replays)."""
            n = cm.num_reqs
            if self.decode_bufs is None:
                capacity = decode_batch_capacity(self.vllm_config)
                self.decode_bufs = (torch.zeros(capacity, dtype=torch.int32, device=self.device),
                                    torch.full((capacity,), -1, dtype=torch.long,
                                               device=self.device))
            seq_buf, slot_buf = self.decode_bufs
            seq = cm.seq_lens_cpu_upper_bound[:n]
            # the token-state builder's plan (cached): which tokens close which block
            plan = host_decode_plan(seq, L, self.prefix_length)
            blocks = num_complete_blocks(seq.long(), L)  # padded requests (length 0): none
            closes = torch.from_numpy(plan.closes)
            block_idx = torch.from_numpy(np.where(plan.closes, plan.block_pos, 0))
            spp = self.entries_per_page
            seq_buf[:n].copy_(upload(blocks, seq_buf.device))
            table = cm.block_table_tensor[:n]
            index = upload(block_idx // spp, table.device)
            pages = table.gather(1, index[:, None])[:, 0].long()
            offset = upload(block_idx % spp, table.device)
            keep = upload(closes, table.device)
            slot_buf[:n] = torch.where(keep, pages * spp + offset, -1)
            block_cm = cm.replace(
                seq_lens=seq_buf[:n],
                seq_lens_cpu_upper_bound=blocks.int(),
                max_seq_len=int(blocks.max()) if n else 0,
                slot_mapping=slot_buf[:n],
                positions=None)
            return super().build(0, block_cm, fast_build)

        def build_for_cudagraph_capture(self, cm: CommonAttentionMetadata):
            # the longest sequence, in blocks, that a captured step attends over
            max_blocks = num_complete_blocks(self.vllm_config.model_config.max_model_len, L)
            return self.build(0, cm.replace(max_seq_len=max_blocks))

    class BlockLevelImpl(base_impl):  # type: ignore[valid-type,misc]
        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                    output_scale=None, output_block_scale=None):
            # The runner's slot mapping is per token; write per block instead.
            if attn_metadata is not None and key is not None and value is not None:
                self.do_kv_cache_update(layer, key, value, kv_cache,
                                        attn_metadata.slot_mapping)
            return super().forward(layer, query, key, value, kv_cache, attn_metadata,
                                   output, output_scale, output_block_scale)

    def kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(KERNEL_ENTRIES_PER_PAGE * L)]

    return subclass_attention_backend_with_overrides(
        name_prefix=f"BlockTransformerL{L}_",
        attention_backend_cls=underlying,
        overrides={
            "get_builder_cls": staticmethod(lambda: BlockLevelBuilder),
            "get_impl_cls": staticmethod(lambda: BlockLevelImpl),
            "forward_includes_kv_cache_update": True,
            "get_supported_kernel_block_sizes": staticmethod(kernel_block_sizes),
        },
    )


class BlockDecoderAttention(Attention):
    """Paged attention over block entries: one KV entry per `block_length`
    tokens. Call it with the q/k/v of the block-ending tokens only."""

    def __init__(self, num_heads: int, head_size: int, scale: float, *,
                 block_length: int, cache_config, prefix: str, **kwargs):
        self.block_length = block_length
        kv_cache_dtype = cache_config.cache_dtype if cache_config else "auto"
        underlying = get_attn_backend(head_size, torch.get_default_dtype(),
                                      kv_cache_dtype)
        super().__init__(num_heads, head_size, scale, cache_config=cache_config,
                         prefix=prefix,
                         attn_backend=make_block_attention_backend(underlying,
                                                                   block_length),
                         **kwargs)

    def get_kv_cache_spec(self, vllm_config: VllmConfig):
        spec = super().get_kv_cache_spec(vllm_config)
        assert isinstance(spec, AttentionSpec)
        if not block_size_ok(spec.block_size, self.block_length):
            raise ValueError(
                f"block_size {spec.block_size} does not work with block_length "
                f"{self.block_length}: it must be a multiple of "
                f"{KERNEL_ENTRIES_PER_PAGE * self.block_length} (e.g. --block-size "
                f"{default_block_size(self.block_length)})")
        return replace(spec, tokens_per_state=self.block_length)


# ---------------------------------------------------------------------------
# Token decoder: bounded per-request state
# ---------------------------------------------------------------------------
@dataclass
class TokenStateMetadata:
    state_slot: torch.Tensor  # [num_reqs] page holding each request's state
    plan: StepPlan | None  # the step's plan, built on the host (step_plan.py) ...
    decode: DecodePlan | None = None  # ... or the static plan of a uniform decode step


class TokenStateBuilder(AttentionMetadataBuilder[TokenStateMetadata]):
    def __init__(self, kv_cache_spec: MambaSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        hf = vllm_config.model_config.hf_config
        # see fast_prefill.py: prompt positions' outputs are not needed
        self.plan_args = (hf.block_length, hf.prefix_length,
                          fast_prefill.enabled(vllm_config), device)
        self.static_decode = StepMode.of(vllm_config).static_decode
        self.decode_buffer: DecodePlanBuffer | None = None  # made at the first decode step
        self.slot_buffer: torch.Tensor | None = None

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        return graph_support(vllm_config, AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE)

    def build(self, common_prefix_len: int, cm: CommonAttentionMetadata,
              fast_build: bool = False) -> TokenStateMetadata:
        n = cm.num_reqs
        slot = mamba_get_block_table_tensor(
            cm.block_table_tensor, cm.seq_lens, self.kv_cache_spec,
            self.vllm_config.cache_config.mamba_cache_mode)[:n, 0]
        if static_decode_step(self.static_decode, cm):
            return self._build_decode(cm, slot)
        plan = device_step_plan(cm.query_start_loc_cpu[:n + 1],
                                cm.seq_lens_cpu_upper_bound[:n], *self.plan_args)
        return TokenStateMetadata(slot.long(), plan)

    def _build_decode(self, cm: CommonAttentionMetadata,
                      slot: torch.Tensor) -> TokenStateMetadata:
        """The static plan and the state slots, in persistent buffers."""
        L, R, _, device = self.plan_args
        if self.decode_buffer is None:
            capacity = decode_batch_capacity(self.vllm_config)
            self.decode_buffer = DecodePlanBuffer(L, R, capacity, device)
            self.slot_buffer = torch.zeros(capacity, dtype=torch.long, device=device)
        n = cm.num_reqs
        decode = self.decode_buffer.upload(
            host_decode_plan(cm.seq_lens_cpu_upper_bound[:n], L, R))
        self.slot_buffer[:n] = slot
        return TokenStateMetadata(self.slot_buffer[:n], None, decode)


class TokenStateBackend(AttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "BLOCK_TRANSFORMER_TOKEN_STATE"

    @staticmethod
    def get_impl_cls():
        raise NotImplementedError("the token decoder computes its own attention")

    @staticmethod
    def get_builder_cls():
        return TokenStateBuilder

    @classmethod
    def is_ssm(cls) -> bool:
        return True


class TokenDecoderState(nn.Module, MambaBase):
    """Weightless layer that declares and receives one token-decoder layer's
    per-request state: `kv_cache[0]` is [pages, 2, R+L-1, heads, head_dim]
    (K and V of the prefix and the open block's tokens), `kv_cache[1]` is
    [pages, max(L-1, 1), D_block / L] (embedding pieces of the open block;
    only layer 0's copy is used)."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype, prefix: str):
        super().__init__()
        self.shapes = shapes
        self.dtypes = tuple(dtype for _ in shapes)
        self.prefix = prefix
        ctx = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in ctx:
            raise ValueError(f"duplicate layer name {prefix}")
        ctx[prefix] = self
        self.kv_cache = (torch.tensor([]),)

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
