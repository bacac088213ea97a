"""Fast prefill: skip token-decoder rows whose outputs nobody reads.

A prompt token's hidden state is read only for its prompt logprob, so when
no request needs prompt logprobs the token decoder need only run each
request's open block (<= R+L-1 rows) instead of every prompt token. vLLM's
own switch for "this model may skip prompt positions" is
`kv_sharing_fast_prefill` (`--kv-sharing-fast-prefill`): with it the API
server refuses `prompt_logprobs`, but vLLM 0.32's offline `LLM` does not and
its worker then dies on an assertion. `PromptLogprobsGuard` closes that gap:
a no-op logits processor whose `validate_params` refuses such requests at
admission, on both paths, with a clear error.
"""
from __future__ import annotations

import torch
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

GUARD = f"{__name__}:PromptLogprobsGuard"


def enabled(vllm_config) -> bool:
    return bool(vllm_config.cache_config.kv_sharing_fast_prefill)


def install_guard(vllm_config) -> None:
    """Add the guard to the model's logits processors (idempotent)."""
    model_config = vllm_config.model_config
    procs = list(model_config.logits_processors or [])
    if GUARD not in procs:
        model_config.logits_processors = procs + [GUARD]


class PromptLogprobsGuard(LogitsProcessor):
    """Refuses prompt_logprobs under fast prefill; changes no logits."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        if sampling_params.prompt_logprobs is not None:
            raise VLLMValidationError(
                "prompt_logprobs (and echo with logprobs) need every prompt "
                "position's output, which --kv-sharing-fast-prefill skips; "
                "start the engine without it to score prompts",
                parameter="prompt_logprobs", value=sampling_params.prompt_logprobs)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass
