"""The Hugging Face Auto classes for converted checkpoints: after
`import vllm_block`, `AutoConfig` and `AutoModelForCausalLM.from_pretrained(dir)`
load them. What `AutoModelForCausalLM` finds is a stand-in that imports the
reference model (`reference.py`: torch and transformers' modeling code) only
when a checkpoint is loaded, because vLLM imports this package in every
process it starts and never uses the reference model.
"""
from __future__ import annotations

from .config import MODEL_TYPE, BlockTransformerConfig


class ReferenceModelOnDemand:
    """`AutoModelForCausalLM`'s entry for `BlockTransformerConfig`: hands
    `from_pretrained` and `from_config` to `BlockTransformerForCausalLM`."""

    config_class = BlockTransformerConfig

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from .reference import BlockTransformerForCausalLM
        return BlockTransformerForCausalLM.from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        from .reference import BlockTransformerForCausalLM
        return BlockTransformerForCausalLM._from_config(config, **kwargs)


def register() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(MODEL_TYPE, BlockTransformerConfig, exist_ok=True)
    AutoModelForCausalLM.register(BlockTransformerConfig, ReferenceModelOnDemand, exist_ok=True)
