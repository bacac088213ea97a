"""Fix for vLLM 0.32 on CPU: a seeded request whose prefill is split kills the engine.

What it fixes
    A request with `seed` gets its own `torch.Generator`. When its prompt is
    prefilled in more than one step (chunked prefill; Mamba align mode splits
    prefills at page boundaries, so any prompt longer than one page; resuming
    after preemption), the sample drawn for a non-final chunk is discarded,
    and vLLM undoes that draw so the request's random stream stays the same
    as if the prompt had been prefilled at once. vLLM undoes it by moving a
    Philox offset back, which only CUDA generators have: on CPU it raises
    `RuntimeError: CPU Generator does not use offset` in the engine core,
    which dies with every request in flight (the API server then exits). It
    is not specific to this plugin: vLLM's native models crash the same way.

Upstream code it replaces
    `GPUModelRunner._bookkeeping_sync` (vllm/v1/worker/gpu_model_runner.py),
    inherited by `CPUModelRunner`::

        for i in discard_sampled_tokens_req_indices:
            gen = self.input_batch.generators.get(int(i))
            if gen is not None:
                gen.set_offset(gen.get_offset() - 4)

    The CPU equivalent is installed on `CPUModelRunner` only: `_sample`
    saves the full state (`get_state()`) of each generator whose row will be
    discarded and restores it after sampling, and `_bookkeeping_sync` runs
    with those generators hidden from the loop above, so it rewinds nothing.

Versions
    vLLM 0.32.x on the CPU platform, and only while the upstream loop above
    is present (checked in the source): anything else is left untouched with
    a warning.

How to remove
    Once vLLM rewinds CPU generators itself, delete this module and its
    `install()` call in `registration.register()`; `tests/test_seeded_sampling.py`
    keeps checking that seeded requests survive chunked prefill.
"""
from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)

SUPPORTED_VLLM = ("0.32.",)
UPSTREAM_REWIND = "gen.set_offset(gen.get_offset() - 4)"
_MARK = "_vllm_block_seed_rewind"


def install() -> bool:
    """Patch `CPUModelRunner` on the CPU platform; True when the fix is active."""
    import vllm
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner, _MARK, False):
        return True
    if not vllm.__version__.startswith(SUPPORTED_VLLM):
        logger.warning("vllm-block: not applying the CPU seeded-sampling fix to vLLM %s "
                       "(written for %s): seeded requests with chunked prefill may crash "
                       "the engine", vllm.__version__, " ".join(SUPPORTED_VLLM))
        return False
    try:
        upstream = inspect.getsource(CPUModelRunner._bookkeeping_sync)
    except (OSError, TypeError):  # no source shipped: cannot check what it replaces
        upstream = ""
    if UPSTREAM_REWIND not in upstream:
        logger.warning("vllm-block: vLLM's generator rewind has changed (or its source is "
                       "not installed); not applying the CPU seeded-sampling fix")
        return False

    sample, bookkeeping = CPUModelRunner._sample, CPUModelRunner._bookkeeping_sync

    def _sample(self, logits, spec_decode_metadata):
        saved = [(gen, gen.get_state()) for _, gen in _discarded_generators(self)]
        try:
            return sample(self, logits, spec_decode_metadata)
        finally:
            for gen, state in saved:
                gen.set_state(state)

    def _bookkeeping_sync(self, *args, **kwargs):
        generators = self.input_batch.generators
        hidden = dict(_discarded_generators(self))
        for i in hidden:
            del generators[i]
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            generators.update(hidden)

    CPUModelRunner._sample = _sample
    CPUModelRunner._bookkeeping_sync = _bookkeeping_sync
    setattr(CPUModelRunner, _MARK, True)
    return True


def _discarded_generators(runner) -> list[tuple[int, object]]:
    """(batch index, generator) of this step's seeded rows whose sample is discarded."""
    num_reqs = runner.input_batch.num_reqs
    generators = runner.input_batch.generators
    discard = runner.discard_request_mask.np[:num_reqs]
    return [(i, generators[i]) for i in discard.nonzero()[0].tolist() if i in generators]
