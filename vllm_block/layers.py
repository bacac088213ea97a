"""GPT-NeoX building blocks shared by both decoders (as in vLLM's
`gpt_neox.py`): self-attention projections with partial rotary, the MLP and
the layer. Each decoder's attention subclass adds the attention itself
(`self.attn`): paged over blocks, or within a token window."""
from __future__ import annotations

import torch
from torch import nn

from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.layernorm import LayerNorm
from vllm.model_executor.layers.linear import (ColumnParallelLinear, QKVParallelLinear,
                                               RowParallelLinear)
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope

from .config import DecoderDims


class NeoXSelfAttention(nn.Module):
    """Fused q/k/v, partial rotary and the output projection around
    `self.attn`, which the subclass builds (this tensor-parallel rank's
    `num_heads` heads of `head_dim`)."""
    attn: nn.Module

    def __init__(self, dims: DecoderDims, max_position: int,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        self.num_heads = dims.num_heads // get_tensor_model_parallel_world_size()
        self.head_dim = dims.head_dim
        self.query_key_value = QKVParallelLinear(dims.hidden_size, self.head_dim, dims.num_heads,
                                                 bias=True, quant_config=quant_config,
                                                 prefix=f"{prefix}.query_key_value")
        self.dense = RowParallelLinear(dims.hidden_size, dims.hidden_size, bias=True,
                                       quant_config=quant_config, prefix=f"{prefix}.dense")
        self.rotary_emb = get_rope(self.head_dim, max_position=max_position, is_neox_style=True,
                                   rope_parameters={"rope_theta": dims.rope_theta,
                                                    "partial_rotary_factor": dims.rotary_pct})

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.query_key_value(x)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.dense(self.attn(q, k, v))
        return out


class NeoXMLP(nn.Module):
    def __init__(self, dims: DecoderDims, quant_config: QuantizationConfig | None,
                 prefix: str) -> None:
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(dims.hidden_size, dims.intermediate_size,
                                                  quant_config=quant_config,
                                                  prefix=f"{prefix}.dense_h_to_4h")
        self.dense_4h_to_h = RowParallelLinear(dims.intermediate_size, dims.hidden_size,
                                               quant_config=quant_config,
                                               prefix=f"{prefix}.dense_4h_to_h")
        self.act = get_act_fn(dims.act)  # "gelu" is the exact (erf) form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.dense_h_to_4h(x)
        x, _ = self.dense_4h_to_h(self.act(x))
        return x


class NeoXLayer(nn.Module):
    """Pre-norm GPT-NeoX layer around the decoder's own attention."""

    def __init__(self, dims: DecoderDims, attention: NeoXSelfAttention,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        self.use_parallel_residual = dims.parallel_residual
        self.input_layernorm = LayerNorm(dims.hidden_size, eps=dims.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(dims.hidden_size, eps=dims.layer_norm_eps)
        self.attention = attention
        self.mlp = NeoXMLP(dims, quant_config, prefix=f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(x), positions)
        if self.use_parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))
