"""The one owner of a step's plan.

vLLM builds attention metadata per KV-cache group, each group with its own
builder (`gpu_model_runner._build_attention_metadata`; the CPU runner
inherits it): the block decoder's group and one or more token-state groups.
All of them need the same facts about the step (which tokens close which
block, the token-decoder rows and windows), and all see the same host-side
`query_start_loc_cpu` / `seq_lens_cpu_upper_bound`. So one `StepPlanner` per
engine, created by the model and handed to its cache layers, decides once per
step whether the step is exact or static, builds the host (numpy) plan once
and uploads it once; every builder finds it through its layers and derives
its group's metadata from that plan (`Step`).

Per-request virtual pads (`config.py`'s alignment rule): a "nopad" model's
request shorter than one block keeps `L - T` pad tokens for its whole life,
so the plan needs each request's prompt length, which vLLM's attention
metadata does not carry. `alignment.VirtualPads`, a no-op logits processor,
keeps `StepPlanner.virtual_pads` (persistent-batch index -> pad count, for
requests whose count is not the model's usual one) up to date from vLLM's
`BatchUpdate`s, which the runner applies before it builds the metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm.config import VllmConfig
from vllm.v1.attention.backend import AttentionCGSupport, CommonAttentionMetadata

from . import fast_prefill
from .step_mode import StepMode
from .step_plan import (BlockQueries, DecodePlan, DecodePlanBuffer, StepPlan, build_decode_plan,
                        build_step_plan, decode_block_queries, is_uniform_decode,
                        step_block_queries)


@dataclass
class Step:
    """One step's plan on the host and on the device, and its block queries."""
    static: bool  # the static decode step (fixed [B] / [B, R] layout) runs
    host: StepPlan | DecodePlan  # numpy
    device: StepPlan | DecodePlan  # torch, on the model's device
    blocks: BlockQueries  # host: the block-level attention metadata's source


class StepPlanner:
    """Per engine: the step mode and fast prefill, decided once at start-up;
    per step: the plan, built once whichever builder asks first."""

    def __init__(self, vllm_config: VllmConfig) -> None:
        hf = vllm_config.model_config.hf_config
        # the plan's lead positions per block (R for "prefix", 1 for "summation")
        self.block_length, self.prefix_length = hf.block_length, hf.token_lead_length
        # batch index -> virtual pad count where it is not `usual_pad`
        # (kept by alignment.VirtualPads; empty for "pad" models)
        self.virtual_pads: dict[int, int] = {}
        self.usual_pad = hf.usual_virtual_pad
        self.mode = StepMode.of(vllm_config)
        self.fast_prefill = fast_prefill.enabled(vllm_config)  # skip prompt rows
        self.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        self.decode_capacity = decode_batch_capacity(vllm_config)
        self.decode_buffer: DecodePlanBuffer | None = None  # at the first static step
        self._last: tuple[bytes, Step] | None = None

    def plan(self, common: CommonAttentionMetadata, device: torch.device) -> Step:
        """This step's plan. It depends only on the requests' token ranges and
        lengths (the same in every group's metadata), so equal inputs are the
        same step, or an identical one."""
        n = common.num_reqs
        query_start_loc = common.query_start_loc_cpu[:n + 1].numpy().astype(np.int64)
        seq = common.seq_lens_cpu_upper_bound[:n].numpy().astype(np.int64)
        num_pad = self.num_pad(n)
        key = query_start_loc.tobytes() + b"|" + seq.tobytes() + b"|" + num_pad.tobytes()
        if self._last is None or self._last[0] != key:
            self._last = (key, self._build(query_start_loc, seq, num_pad, device))
        return self._last[1]

    def num_pad(self, n: int) -> np.ndarray:
        """[n] each request's virtual pad count (batch order)."""
        num_pad = np.full(n, self.usual_pad, dtype=np.int64)
        for index, pad in self.virtual_pads.items():
            if index < n:
                num_pad[index] = pad
        return num_pad

    def _build(self, query_start_loc: np.ndarray, seq: np.ndarray, num_pad: np.ndarray,
               device: torch.device) -> Step:
        L, R = self.block_length, self.prefix_length
        if self.mode.static_decode and is_uniform_decode(query_start_loc):
            host = build_decode_plan(seq, L, R, num_pad)
            return Step(True, host, self._decode_buffer(device).upload(host),
                        decode_block_queries(host, seq, L, num_pad))
        host = build_step_plan(query_start_loc, seq, L, R, self.fast_prefill, num_pad)
        return Step(False, host, host.to(device), step_block_queries(host, seq, L, num_pad))

    def _decode_buffer(self, device: torch.device) -> DecodePlanBuffer:
        if self.decode_buffer is None:
            self.decode_buffer = DecodePlanBuffer(self.block_length, self.prefix_length,
                                                  self.decode_capacity, device)
        return self.decode_buffer


def planner_of(vllm_config: VllmConfig, layer_names: list[str]) -> StepPlanner:
    """The planner of the model whose cache layers a builder serves."""
    layers = vllm_config.compilation_config.static_forward_context
    return layers[layer_names[0]].planner


def engine_planner(vllm_config: VllmConfig) -> StepPlanner:
    """The planner of the engine's model (for class-level questions)."""
    for layer in vllm_config.compilation_config.static_forward_context.values():
        if isinstance(getattr(layer, "planner", None), StepPlanner):
            return layer.planner
    raise LookupError("no Block Transformer cache layer in this engine")


def decode_batch_capacity(vllm_config: VllmConfig) -> int:
    """Most requests one decode step can hold (persistent buffers' size)."""
    cc = vllm_config.compilation_config
    return max(vllm_config.scheduler_config.max_num_seqs, cc.max_cudagraph_capture_size or 0)


def graph_support(vllm_config: VllmConfig, base: AttentionCGSupport) -> AttentionCGSupport:
    """Uniform single-token decode steps are static (and capturable) only
    when the step mode runs them on the static plan."""
    if not engine_planner(vllm_config).mode.static_decode:
        return AttentionCGSupport.NEVER
    return min(base, AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE, key=lambda s: s.value)
