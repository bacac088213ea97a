"""Per-request alignment in vLLM: a "nopad" model's short prompts.

`config.py` holds the rule: a request keeps `num_pad` virtual pad tokens for
its whole life, fixed by its prompt length T. For "pad" models that is
always L - 1; for "nopad" models it is 0, except for a prompt shorter than
one block, which is left-padded to one (`L - T`). Two places in vLLM need
the count of such a request, and neither sees it in the data vLLM hands
them, so this module gives it to each:

- **The step plan** (worker): `VirtualPads`, a logits processor that changes
  no logits, reads each request's prompt length from vLLM's `BatchUpdate`s
  (the persistent batch's adds, removals and moves, which the runner applies
  before it builds the step's attention metadata, in the same batch order)
  and keeps `StepPlanner.virtual_pads` up to date. A request resumed after
  preemption is added again with its original prompt, so its count is the
  same.
- **Prefix caching** (engine core): vLLM keys cached pages by token content
  only. The same tokens sit at a different alignment in a request that
  started short (`L - T` pads) and in one that started long (none), and the
  pages (block-decoder entries, token-decoder state snapshots) differ, so a
  page must never be reused across the two. The scheduler made by
  `salting_scheduler` adds the pad count to such a request's `cache_salt`
  before vLLM looks anything up (vLLM hashes the salt into the first page,
  so every later page's hash depends on it) and recomputes its page hashes.
  Requests with the same pad count still share pages: the pad is the
  end-of-text token, so equal tokens at an equal pad count are the same
  computation. A user's own salt is kept in front.
"""
from __future__ import annotations

import functools

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

PROCESSOR = f"{__name__}:VirtualPads"
SCHEDULER = f"{__name__}.salting_scheduler"


def has_per_request_pads(config) -> bool:
    """Whether some prompt lengths get a pad count other than the usual one."""
    usual = config.usual_virtual_pad
    return any(config.virtual_pad(t) != usual for t in range(1, config.block_length))


def configure_engine(vllm_config) -> None:
    """Install the processor and the scheduler for a model that needs them."""
    if not has_per_request_pads(vllm_config.model_config.hf_config):
        return
    model_config = vllm_config.model_config
    procs = list(model_config.logits_processors or [])
    if PROCESSOR not in procs:
        model_config.logits_processors = procs + [PROCESSOR]
    scheduler = vllm_config.scheduler_config
    if scheduler.scheduler_cls not in (None, SCHEDULER):
        raise ValueError(
            f"this model (alignment={model_config.hf_config.alignment!r}) needs its own "
            f"scheduler to key prefix-cache pages by alignment; start the engine "
            f"without scheduler_cls ({scheduler.scheduler_cls!r})")
    scheduler.scheduler_cls = SCHEDULER


class VirtualPads(LogitsProcessor):
    """Keeps the step planner's per-request pad counts; changes no logits."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.vllm_config = vllm_config
        self.config = vllm_config.model_config.hf_config
        self.usual = self.config.usual_virtual_pad
        self.pads: dict[int, int] | None = None  # the planner's, once the model exists

    def _pad(self, params, prompt_tok_ids: list[int] | None, output_tok_ids) -> int | None:
        pad = self.config.virtual_pad(len(prompt_tok_ids or ()))
        return None if pad == self.usual else pad

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.pads is None:
            from .planner import engine_planner
            self.pads = engine_planner(self.vllm_config).virtual_pads
        process_dict_updates(self.pads, batch_update, self._pad)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True


def salt_request(request, config) -> None:
    """Key `request`'s prefix-cache pages by its pad count when it is not
    the usual one (see the module docstring)."""
    pad = config.virtual_pad(request.num_prompt_tokens)
    if pad == config.usual_virtual_pad:
        return
    request.cache_salt = f"{request.cache_salt or ''}|block_transformer.virtual_pad={pad}"
    request.block_hashes = []
    request.update_block_hashes()


def salting_scheduler(*, vllm_config, **kwargs):
    """vLLM's scheduler (async or not, as the engine resolved it) with
    `salt_request` applied to every request it admits."""
    return _salting(vllm_config.scheduler_config.async_scheduling)(vllm_config=vllm_config,
                                                                   **kwargs)


@functools.cache
def _salting(async_scheduling: bool):
    if async_scheduling:
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler as base
    else:
        from vllm.v1.core.sched.scheduler import Scheduler as base

    class AlignmentSaltingScheduler(base):
        def add_request(self, request) -> None:
            salt_request(request, self.vllm_config.model_config.hf_config)
            super().add_request(request)

    return AlignmentSaltingScheduler
