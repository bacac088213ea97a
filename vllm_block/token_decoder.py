"""The token decoder: GPT-NeoX over [prefix_1..R, x_0..x_{L-2}] ("prefix") or
[start + e_0, x_0 + e_1, .., x_{L-2} + e_{L-1}] ("summation") of one block at a time, each layer attending within the block's window over a bounded
per-request state (token_attention.py) instead of a growing KV cache."""
from __future__ import annotations

import torch
from torch import nn

from vllm.model_executor.layers.layernorm import LayerNorm
from vllm.model_executor.layers.quantization import QuantizationConfig

from .config import BlockTransformerConfig, DecoderDims
from .layers import NeoXLayer, NeoXSelfAttention
from .planner import StepPlanner
from .token_attention import TokenWindowAttention


class TokenSelfAttention(NeoXSelfAttention):
    def __init__(self, dims: DecoderDims, window: int, pieces_shape: tuple[int, int],
                 addends_shape: tuple[int, int] | None, dtype: torch.dtype,
                 planner: StepPlanner, quant_config: QuantizationConfig | None, prefix: str,
                 cache_name: str) -> None:
        super().__init__(dims, window, quant_config, prefix)
        self.attn = TokenWindowAttention(self.num_heads, self.head_dim, window=window,
                                         pieces_shape=pieces_shape,
                                         addends_shape=addends_shape, dtype=dtype,
                                         planner=planner, prefix=cache_name)


class TokenDecoder(nn.Module):
    """Its cache layers are named `{prefix}.state.{n}` with n counted on from
    the block decoder's layers: vLLM needs one distinct integer per cache
    layer name."""

    def __init__(self, config: BlockTransformerConfig, dtype: torch.dtype,
                 quant_config: QuantizationConfig | None, planner: StepPlanner,
                 first_cache_index: int, prefix: str) -> None:
        super().__init__()
        dims = config.decoder_dims("token")
        pieces_shape = (max(config.block_length - 1, 1), config.embedder_hidden_size)
        addends_shape = (max(config.block_length - 1, 1), config.token_hidden_size) \
            if config.decoding_strategy == "summation" else None
        self.layers = nn.ModuleList(
            NeoXLayer(dims, TokenSelfAttention(
                dims, config.token_cache_length, pieces_shape, addends_shape, dtype, planner,
                quant_config,
                prefix=f"{prefix}.layers.{i}.attention",
                cache_name=f"{prefix}.state.{first_cache_index + i}"),
                quant_config, prefix=f"{prefix}.layers.{i}")
            for i in range(dims.num_layers))
        self.final_layer_norm = LayerNorm(dims.hidden_size, eps=dims.layer_norm_eps)

    @property
    def windows(self) -> list[TokenWindowAttention]:
        return [layer.attention.attn for layer in self.layers]

    @property
    def pieces(self) -> TokenWindowAttention:
        """The layer whose state keeps the open blocks' embedding pieces."""
        return self.layers[0].attention.attn

    def forward(self, rows: torch.Tensor, row_pos: torch.Tensor,
                out_rows: torch.Tensor) -> torch.Tensor:
        """Rows in the step plan's layout at window positions `row_pos`; the
        normalised hidden states of rows `out_rows`."""
        x = rows
        for layer in self.layers:
            x = layer(x, row_pos)
        return self.final_layer_norm(x[out_rows])
