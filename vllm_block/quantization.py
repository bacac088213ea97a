"""Which of vLLM's quantization methods this model runs, per platform.

The model passes vLLM's `quant_config` to every linear layer and the LM head
(as vLLM's own models do), so a method applies as it would to GPT-NeoX.
Checkpoints written by `vllm-block convert` are unquantized, so only vLLM's
online methods (quantized while loading) can apply. Measured on vLLM 0.32's
CPU build (tests/test_vllm_quantization.py, README "Quantization"):

- fp8_per_channel: runs (fp8 linear weights, logprobs close to bf16), but
  the CPU build has no fp8 kernel for it: decoding is two to three orders of
  magnitude slower than bf16, so it is allowed with a warning;
- fp8 / fp8_per_tensor: the CPU build lacks `static_scaled_fp8_quant`, so
  the engine would die while loading; fp8_per_block: fails on bf16
  activations; mxfp8: no CPU kernel; int8_per_channel_weight_only: defines
  a MoE spec only, so it would quantize 0 of this model's layers (silently).

On CUDA the fp8 family is allowed (not run here: no CUDA machine with vLLM).
Anything else is refused at start-up by name, never ignored.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

CPU_METHODS = ("fp8_per_channel",)
CPU_SLOW = {"fp8_per_channel": "the CPU build has no fp8 GEMM: decoding runs 100-1000x "
                               "slower than bf16"}
CUDA_METHODS = ("fp8", "fp8_per_tensor", "fp8_per_channel", "fp8_per_block")


def check(method: str | None) -> None:
    """Raise ValueError naming `method` unless it works on this platform."""
    if method is None:
        return
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        platform, supported = "vLLM's CPU build", CPU_METHODS
    elif current_platform.is_cuda():
        platform, supported = "CUDA", CUDA_METHODS
    else:
        platform, supported = current_platform.device_name, ()
    if method not in supported:
        raise ValueError(
            f"quantization method {method!r} is not supported for Block Transformer "
            f"models on {platform} (supported there: {', '.join(supported) or 'none'}); "
            f"checkpoints from `vllm-block convert` are unquantized, so only vLLM's "
            f"online methods can apply")
    if current_platform.is_cpu() and method in CPU_SLOW:
        logger.warning("quantization %s: %s", method, CPU_SLOW[method])
