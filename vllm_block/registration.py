"""`register()`: the `vllm.general_plugins` entry point.

vLLM calls it in every process it starts (API server, engine core, workers).
It must be cheap and idempotent: the model class is registered as a lazy
"module:Class" string, so nothing heavy is imported until vLLM builds it.
"""
from __future__ import annotations

import os

from . import cpu_seed_rewind
from .config import ARCHITECTURE, MODEL_TYPE


def register() -> None:
    # The V2 model runner handles Mamba-style state only for hybrid models.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from .config import BlockTransformerConfig

    AutoConfig.register(MODEL_TYPE, BlockTransformerConfig, exist_ok=True)
    _register_with_vllm_config_loader()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "vllm_block.model:BlockTransformerForCausalLM")
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, _engine_config_hook())
    # vLLM 0.32 bug fix for every model on CPU (see the module's docstring)
    cpu_seed_rewind.install()


def _register_with_vllm_config_loader() -> None:
    """Let vLLM's own config loader resolve `model_type: block_transformer`."""
    try:
        from vllm.transformers_utils.config import _CONFIG_REGISTRY
    except ImportError:  # older layouts: AutoConfig registration suffices
        return
    from .config import BlockTransformerConfig
    if MODEL_TYPE not in _CONFIG_REGISTRY:
        _CONFIG_REGISTRY[MODEL_TYPE] = BlockTransformerConfig


def _engine_config_hook():
    from vllm.model_executor.models.config import MambaModelConfig, VerifyAndUpdateConfig

    class BlockTransformerEngineConfig(VerifyAndUpdateConfig):
        """Runs before the platform fills in its defaults (block size!)."""

        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            from vllm.platforms import current_platform

            from . import alignment, fast_prefill, quantization, step_mode

            _choose_block_size(vllm_config)
            _refuse_unsupported(vllm_config)
            _check_block_head_size(vllm_config)
            quantization.check(vllm_config.model_config.quantization)
            _check_tensor_parallel(vllm_config)
            # CUDA: FULL_DECODE_ONLY graphs of the static decode step (step_mode.py)
            step_mode.configure_engine(vllm_config, on_cuda=current_platform.is_cuda())
            if fast_prefill.enabled(vllm_config):
                fast_prefill.install_guard(vllm_config)
            # a "nopad" model's short prompts: per-request pads (alignment.py)
            alignment.configure_engine(vllm_config)
            MambaModelConfig.verify_and_update_config(vllm_config)

    return BlockTransformerEngineConfig


def _choose_block_size(vllm_config) -> None:
    """The model's default page size, or the user's checked against the page rule."""
    from .block_attention import check_block_size, default_block_size

    L = vllm_config.model_config.hf_config.block_length
    cache = vllm_config.cache_config
    if not cache.user_specified_block_size:
        cache.block_size = default_block_size(L)
        cache.user_specified_block_size = True
    check_block_size(cache.block_size, L)


def _refuse_unsupported(vllm_config) -> None:
    if vllm_config.speculative_config is not None:
        raise ValueError(
            "speculative decoding is not supported for Block Transformer "
            "models: the token decoder's per-request state would keep the "
            "K/V of rejected draft tokens; start the engine without "
            "--speculative-config")
    if vllm_config.lora_config is not None:
        raise ValueError(
            "LoRA is not supported for Block Transformer models (the "
            "architecture has no LoRA layers); start the engine without "
            "--enable-lora")


def _check_block_head_size(vllm_config) -> None:
    """In the engine's process, before any worker starts (the same check runs
    again where the layer picks its backend): a head size larger than every
    one the platform's kernel takes is refused; smaller ones are padded."""
    from vllm.config import set_current_vllm_config

    from .block_attention import platform_backend

    hf, model_config = vllm_config.model_config.hf_config, vllm_config.model_config
    with set_current_vllm_config(vllm_config):
        platform_backend(hf.block_hidden_size // hf.block_num_attention_heads,
                         model_config.dtype, vllm_config.cache_config.cache_dtype)


def _check_tensor_parallel(vllm_config) -> None:
    hf = vllm_config.model_config.hf_config
    tp = vllm_config.parallel_config.tensor_parallel_size
    for dec in ("block", "token"):
        for field, what in (("num_attention_heads", "attention heads"),
                            ("intermediate_size", "MLP channels")):
            n = getattr(hf, f"{dec}_{field}")
            if n % tp:
                raise ValueError(
                    f"the {dec} decoder has {n} {what} ({dec}_{field}), which "
                    f"tensor_parallel_size {tp} does not divide")
