"""The block decoder: GPT-NeoX over block embeddings, attending over vLLM's
paged KV cache with one entry per block; rotary position = block index."""
from __future__ import annotations

import torch
from torch import nn

from vllm.config import CacheConfig
from vllm.model_executor.layers.layernorm import LayerNorm
from vllm.model_executor.layers.quantization import QuantizationConfig

from .block_attention import BlockDecoderAttention
from .config import BlockTransformerConfig, DecoderDims, num_block_positions
from .layers import NeoXLayer, NeoXSelfAttention
from .planner import StepPlanner


class BlockSelfAttention(NeoXSelfAttention):
    def __init__(self, dims: DecoderDims, max_position: int, block_length: int,
                 cache_config: CacheConfig | None, planner: StepPlanner,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__(dims, max_position, quant_config, prefix)
        self.attn = BlockDecoderAttention(self.num_heads, self.head_dim,
                                          block_length=block_length, cache_config=cache_config,
                                          planner=planner, prefix=f"{prefix}.attn")


class BlockDecoder(nn.Module):
    """The rotary table covers the engine's `max_model_len`, which a user may
    set past the trained positions (VLLM_ALLOW_LONG_MAX_MODEL_LEN): quality
    there is theirs to judge, but positions past the table would read
    garbage (NaN logits)."""

    def __init__(self, config: BlockTransformerConfig, cache_config: CacheConfig | None,
                 quant_config: QuantizationConfig | None, max_model_len: int,
                 planner: StepPlanner, prefix: str) -> None:
        super().__init__()
        dims = config.decoder_dims("block")
        max_blocks = max(config.block_max_position_embeddings,
                         num_block_positions(max_model_len, config.block_length))
        self.layers = nn.ModuleList(
            NeoXLayer(dims, BlockSelfAttention(dims, max_blocks, config.block_length,
                                               cache_config, planner, quant_config,
                                               prefix=f"{prefix}.layers.{i}.attention"),
                      quant_config, prefix=f"{prefix}.layers.{i}")
            for i in range(dims.num_layers))
        self.final_layer_norm = LayerNorm(dims.hidden_size, eps=dims.layer_norm_eps)

    def forward(self, block_emb: torch.Tensor, block_pos: torch.Tensor) -> torch.Tensor:
        x = block_emb
        for layer in self.layers:
            x = layer(x, block_pos)
        return self.final_layer_norm(x)
