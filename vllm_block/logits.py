"""The logits the model hands vLLM's sampler: float32, in memory kept from
step to step.

vLLM's sampler converts the logits to float32, a new [B, vocab] tensor every
step. On CPU, tensors larger than glibc's mmap threshold (at most 32 MiB) are
mapped fresh on every allocation and page-faulted in as they are written:
with a 50k vocabulary the float32 logits pass it from about 170 requests and
the bf16 LM-head output from about 330. Measured at B = 256, bf16: the
conversion took 15 ms of a 114 ms decode step; at B = 428 the LM head took
2.3x its GEMM time (docs/benchmarks.md, "Decode step at large batch").

So the LM head runs in row chunks whose output stays under the threshold (on
CPU only; a chunk re-reads the LM head's weights, 77 MB for `block_main_b4_85`
in bf16, about 2 ms), and the float32 result goes into a buffer of
`max_num_seqs` rows. The sampler uses the logits within the step; the next
step's overwrite them. More rows than that (prompt logprobs of a long chunk)
get a fresh tensor.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

MMAP_THRESHOLD = 32 << 20  # glibc's largest dynamic mmap threshold (64-bit)
CHUNK_BYTES = MMAP_THRESHOLD - (2 << 20)  # room for the vocabulary's padding


class FloatLogits:
    def __init__(self, max_rows: int, row_bytes: int, device_type: str) -> None:
        """`row_bytes`: one row of the LM head's output (vocabulary x dtype size)."""
        self.max_rows = max_rows
        self.chunk = max(1, CHUNK_BYTES // row_bytes) if device_type == "cpu" else None
        self.buffer: torch.Tensor | None = None

    def __call__(self, lm_head: Callable[[torch.Tensor], torch.Tensor | None],
                 hidden: torch.Tensor) -> torch.Tensor | None:
        """`lm_head(hidden)` as float32, computed in chunks of rows."""
        rows = hidden.shape[0]
        step = min(self.chunk or rows, rows) or 1
        out = None
        for start in range(0, max(rows, 1), step):  # one call for an empty batch too
            part = lm_head(hidden[start:start + step])
            if part is None:  # a tensor-parallel rank without the gathered logits
                return None
            if step >= rows and part.dtype == torch.float32:
                return part  # one chunk, already float32: nothing to convert
            if out is None:
                out = self._output(rows, part)
            out[start:start + len(part)].copy_(part)
        return out

    def _output(self, rows: int, part: torch.Tensor) -> torch.Tensor:
        shape = (rows, *part.shape[1:])
        if rows > self.max_rows:
            return torch.empty(shape, dtype=torch.float32, device=part.device)
        if self.buffer is None or self.buffer.shape[1:] != part.shape[1:] \
                or self.buffer.device != part.device:
            self.buffer = torch.empty((self.max_rows, *part.shape[1:]),
                                      dtype=torch.float32, device=part.device)
        return self.buffer[:rows]
