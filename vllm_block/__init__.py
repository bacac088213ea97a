"""vllm-block: serve Block Transformer language models with vLLM.

Importing the package registers the Hugging Face Auto classes (cheap); the
vLLM side is registered by the `vllm.general_plugins` entry point
(`vllm_block.registration:register`) when vLLM starts.
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .config import ARCHITECTURE, MODEL_TYPE, BlockTransformerConfig
from .reference import BlockTransformerForCausalLM

__version__ = "0.1.0"
__all__ = ["BlockTransformerConfig", "BlockTransformerForCausalLM", "__version__"]

AutoConfig.register(MODEL_TYPE, BlockTransformerConfig, exist_ok=True)
AutoModelForCausalLM.register(BlockTransformerConfig, BlockTransformerForCausalLM,
                              exist_ok=True)
