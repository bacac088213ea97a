"""vLLM's profile and warm-up runs call the model with no attention metadata
before the KV cache exists, to measure the step's peak memory. The model then
runs the heaviest step this engine can schedule (`worst_case_plan` for this
many tokens) on scratch state, so the memory vLLM measures includes its
activations."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vllm.forward_context import get_forward_context

from .planner import StepPlanner
from .step_plan import StepPlan, worst_case_plan
from .token_attention import TokenStateMetadata, TokenWindowAttention


@contextmanager
def worst_case_step(planner: StepPlanner, windows: list[TokenWindowAttention], num_tokens: int,
                    device: torch.device) -> Iterator[StepPlan]:
    """Within it, the forward context holds the worst-case plan for the
    token-window layers (no metadata for the block decoder's layers, which
    then attend to nothing) and those layers hold scratch states of one page."""
    plan = worst_case_plan(num_tokens, planner.max_num_seqs, planner.block_length,
                           planner.prefix_length, planner.fast_prefill).to(device)
    meta = TokenStateMetadata(torch.zeros(len(plan.last_win), dtype=torch.long, device=device),
                              plan)
    context = get_forward_context()
    saved = context.attn_metadata, [layer.kv_cache for layer in windows]
    context.attn_metadata = {name: None for name in context.no_compile_layers}
    for layer in windows:
        context.attn_metadata[layer.prefix] = meta
        layer.kv_cache = tuple(torch.zeros((1, *shape), dtype=dtype, device=device)
                               for shape, dtype in zip(layer.shapes, layer.dtypes))
    try:
        yield plan
    finally:
        context.attn_metadata = saved[0]
        for layer, kv_cache in zip(windows, saved[1]):
            layer.kv_cache = kv_cache
