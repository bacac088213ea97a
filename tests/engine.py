"""Helpers for tests that drive the real vLLM engine (`LLM()`)."""
from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator
from pathlib import Path

import torch

# fp32 results of the vLLM model vs ground truth / the reference model
LOGPROB_TOL = 1e-3

ENGINE_DEFAULTS = dict(
    skip_tokenizer_init=True,
    dtype="float32",
    enforce_eager=True,
    max_model_len=512,
    kv_cache_memory_bytes=32 << 20,
    disable_log_stats=False,
    seed=0,
)


@contextlib.contextmanager
def engine(model: str | Path, **kwargs) -> Iterator["vllm.LLM"]:  # noqa: F821
    """A real vLLM engine on `model`, shut down on exit (tests marked `engine` only)."""
    import os

    from vllm import LLM

    if os.environ.get("VLLM_BLOCK_TESTS_NO_ENGINE"):
        raise RuntimeError("this test starts a vLLM engine: mark it @pytest.mark.engine")
    from vllm.distributed import cleanup_dist_env_and_memory

    llm = LLM(model=str(model), **{**ENGINE_DEFAULTS, **kwargs})
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def engine_config(model: str | Path, max_model_len: int = 256, **kwargs):
    """vLLM's engine config for `model` (the plugin's config hook runs in it),
    without starting an engine."""
    from vllm.engine.arg_utils import EngineArgs

    import vllm_block.registration

    vllm_block.registration.register()
    return EngineArgs(model=str(model), skip_tokenizer_init=True, max_model_len=max_model_len,
                      **kwargs).create_engine_config()


def token_prompts(prompts: list[list[int]]) -> list[dict]:
    return [{"prompt_token_ids": list(p)} for p in prompts]


def greedy_params(max_tokens: int, logprobs: int | None = 5,
                  prompt_logprobs: int | None = 1, **kwargs):
    from vllm import SamplingParams

    kwargs = {"ignore_eos": True, "detokenize": False, **kwargs}
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs,
                          prompt_logprobs=prompt_logprobs, **kwargs)


def metric(llm, name: str) -> float:
    """Sum of a counter from vLLM's own metrics (needs disable_log_stats=False)."""
    return sum(m.value for m in llm.get_metrics() if m.name == name
               and isinstance(getattr(m, "value", None), (int, float)))


def generated_logprobs(out) -> list[dict]:
    """The logprobs of every generated token: the checks compare them, so a
    request without them (or with fewer) fails instead of passing unchecked."""
    logprobs = out.outputs[0].logprobs
    assert logprobs is not None, "no logprobs: request them (greedy_params(logprobs=...))"
    assert len(logprobs) == len(out.outputs[0].token_ids), \
        f"{len(logprobs)} logprobs for {len(out.outputs[0].token_ids)} tokens"
    return logprobs


def check_against_cases(outputs, cases: list[dict], tol: float = LOGPROB_TOL,
                        vocab_size: int | None = None) -> float:
    """Assert greedy.json cases: tokens exact, top-5 and prompt logprobs within
    `tol`. A prompt logprob of None (the original forward() predicts nothing
    there: a no-pad model's first block) must be the uniform -ln(vocab_size).
    Returns the largest logprob error seen."""
    worst = 0.0
    for case, out in zip(cases, outputs, strict=True):
        got = list(out.outputs[0].token_ids)
        assert got == case["greedy"], f"prompt {case['prompt']}: {got} != {case['greedy']}"
        logprobs = generated_logprobs(out)
        for i, (step, lps) in enumerate(zip(case["steps"], logprobs, strict=True)):
            for tok, expected in step["top5"]:
                assert tok in lps, f"step {i}: token {tok} missing from top-5 {list(lps)}"
                worst = max(worst, abs(lps[tok].logprob - expected))
        if case["prompt_logprobs"]:
            plp = out.prompt_logprobs
            assert plp is not None and plp[0] is None
            for i, expected in enumerate(case["prompt_logprobs"]):
                if expected is None:
                    assert vocab_size, "a case without a prediction needs vocab_size"
                    expected = -math.log(vocab_size)
                worst = max(worst, abs(plp[i + 1][case["prompt"][i + 1]].logprob - expected))
    assert worst <= tol, f"max logprob error {worst:.2e} > {tol}"
    return worst


@torch.no_grad()
def reference_logprobs(model, ids: list[int], prompt_length: int | None = None) -> torch.Tensor:
    """[len(ids), V] log-probabilities of the reference model's full forward,
    in the alignment a request with a prompt of `prompt_length` tokens (all
    of `ids` when None) keeps for its whole life."""
    num_pad = model.config.virtual_pad(prompt_length or len(ids))
    return model(torch.tensor([ids]), num_virtual_pad=num_pad).logits[0].float().log_softmax(-1)


def check_against_reference(model, prompts: list[list[int]], outputs,
                            tol: float = LOGPROB_TOL) -> float:
    """Assert vLLM greedy outputs equal the reference model's greedy tokens and
    their logprobs (generated, and prompt when requested) are within `tol`."""
    worst = 0.0
    for prompt, out in zip(prompts, outputs, strict=True):
        got = list(out.outputs[0].token_ids)
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=len(got))[0].tolist()
        assert got == ids[len(prompt):], f"prompt of {len(prompt)}: {got} != {ids[len(prompt):]}"
        lp = reference_logprobs(model, prompt + got, len(prompt))
        for i, (tok, lps) in enumerate(zip(got, generated_logprobs(out), strict=True)):
            worst = max(worst, abs(lps[tok].logprob - lp[len(prompt) - 1 + i, tok].item()))
        if out.prompt_logprobs is not None:  # requested: one per prompt token, none for the first
            assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
            for i in range(1, len(prompt)):
                lps = out.prompt_logprobs[i]
                worst = max(worst, abs(lps[prompt[i]].logprob - lp[i - 1, prompt[i]].item()))
    assert worst <= tol, f"max logprob error {worst:.2e} > {tol}"
    return worst


def save_model(model, path: Path) -> Path:
    """Write a reference model as a HF directory vLLM can serve."""
    model.config.architectures = ["BlockTransformerForCausalLM"]
    model.save_pretrained(path, safe_serialization=True)
    return path
