"""vllm-block: serve Block Transformer language models with vLLM.

vLLM imports this package in every process it starts (its plugin entry point
is `vllm_block.registration:register`), so importing it loads neither the
reference model nor the tools: `import vllm_block` registers the Hugging Face
Auto classes (`hf_auto.py`), and `BlockTransformerConfig` /
`BlockTransformerForCausalLM` load on first use.
"""
from . import hf_auto

__version__ = "0.1.0"
__all__ = ["BlockTransformerConfig", "BlockTransformerForCausalLM", "__version__"]

hf_auto.register()


def __getattr__(name: str):
    if name == "BlockTransformerConfig":
        from .config import BlockTransformerConfig
        return BlockTransformerConfig
    if name == "BlockTransformerForCausalLM":
        from .reference import BlockTransformerForCausalLM
        return BlockTransformerForCausalLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
