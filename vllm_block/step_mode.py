"""How an engine step runs: which decode path, compiled or not, graphs or not.

Two forwards exist (model.py):
- the *exact* step: any batch, on exactly the rows its host-built plan lists;
  eager, shapes vary with how many blocks close;
- the *static decode* step: batches where every request has one new token,
  every shape a function of the batch size B (block decoder on all B rows,
  token decoder on B x R rows). It is what a CUDA graph can capture and what
  torch.compile can compile without data-dependent guards.

The choice, `--additional-config '{"block_transformer_decode": CHOICE}'`:
- "auto" (default): static where it is captured or compiled, exact elsewhere.
  On CUDA the config hook picks FULL_DECODE_ONLY CUDA graphs (decode steps
  replay the static step; mixed and prefill steps run the exact step
  eagerly), unless the user set --enforce-eager or a compilation config. On
  CPU the exact step runs eagerly: the static step compiled with inductor
  measured slower there (docs/architecture.md, "How a step runs").
- "static": the static step for every uniform decode step, compiled on CPU
  unless --enforce-eager.
- "exact": never the static step (CUDA graphs are then left off).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

KEY = "block_transformer_decode"
CHOICES = ("auto", "static", "exact")
# Token-decoder rows per captured decode step: R x B rows of GEMM stay cheap
# on a GPU up to a few hundred (the step reads each weight once either way);
# past the cap vLLM runs the step eagerly with exact work (GRAPHS.md s. 4).
MAX_CAPTURED_ROWS = 512


def decode_choice(vllm_config) -> str:
    """The user's choice, checked: unknown values are refused by name."""
    extra = vllm_config.additional_config or {}
    choice = extra.get(KEY, "auto")
    if choice not in CHOICES:
        raise ValueError(f"additional_config {KEY}={choice!r} is not one of "
                         f"{', '.join(CHOICES)}")
    return choice


def max_graph_batch(prefix_length: int, max_num_seqs: int) -> int:
    """Largest decode batch captured as a CUDA graph: R x B <= MAX_CAPTURED_ROWS."""
    return max(1, min(max_num_seqs, MAX_CAPTURED_ROWS // prefix_length))


def configure_engine(vllm_config, on_cuda: bool) -> None:
    """Engine-config hook part: on CUDA, FULL_DECODE_ONLY graphs of the static
    decode step unless the user chose otherwise; elsewhere nothing to capture."""
    from vllm.config import CompilationMode, CUDAGraphMode

    choice = decode_choice(vllm_config)
    cc = vllm_config.compilation_config
    model_config = vllm_config.model_config
    user_chose = (model_config.enforce_eager or cc.mode is not None
                  or cc.cudagraph_mode is not None)
    if not on_cuda or user_chose:
        return
    if choice == "exact":  # nothing static to capture
        model_config.enforce_eager = True
        return
    cc.mode = CompilationMode.NONE  # FULL graphs wrap the whole model; no compile needed
    cc.cudagraph_mode = CUDAGraphMode.FULL_DECODE_ONLY
    if cc.max_cudagraph_capture_size is None and cc.cudagraph_capture_sizes is None:
        cc.max_cudagraph_capture_size = max_graph_batch(
            model_config.hf_config.prefix_length, vllm_config.scheduler_config.max_num_seqs)


@dataclass(frozen=True)
class StepMode:
    static_decode: bool  # uniform decode steps run the static step
    compile_decode: bool  # ... compiled with torch.compile (inductor)

    @classmethod
    def of(cls, vllm_config) -> "StepMode":
        """The mode of a configured engine (after vLLM's defaults applied)."""
        from vllm.config import CompilationMode, CUDAGraphMode
        from vllm.platforms import current_platform

        choice = decode_choice(vllm_config)
        cc = vllm_config.compilation_config
        graphs = (cc.cudagraph_mode is not None
                  and cc.cudagraph_mode.decode_mode() == CUDAGraphMode.FULL)
        compiled = cc.mode not in (None, CompilationMode.NONE)
        return cls.resolve(choice, current_platform.is_cuda(), graphs, compiled)

    @classmethod
    def resolve(cls, choice: str, on_cuda: bool, graphs: bool, compiled: bool) -> "StepMode":
        """Pure part of `of`: the decision from the settings alone."""
        if choice == "exact":
            return cls(False, False)
        if on_cuda:  # graphs capture the static step; compiling it is not needed
            return cls(choice == "static" or graphs, False)
        static = choice == "static"
        return cls(static, static and compiled)


def compile_static_step(step: Callable, vllm_config) -> Callable:
    """`step(ids, plan, pieces, addends)` compiled with the inductor options vLLM's
    platform set. vLLM's compile settings make shapes static by default: the
    batch is marked dynamic (one graph for all B > 1, compiled at the first
    step of that kind: the caches' strides are known then). The layers' state
    slots are marked where their metadata is built (token_attention.py)."""
    import torch

    options = dict(vllm_config.compilation_config.inductor_compile_config)
    compiled = torch.compile(step, dynamic=True, fullgraph=True, options=options)

    def run(ids, plan, pieces, addends):
        for t in (ids, *(getattr(plan, f.name) for f in fields(plan)), pieces, addends):
            if t is not None:
                torch._dynamo.maybe_mark_dynamic(t, 0)
        return compiled(ids, plan, pieces, addends)

    return run
