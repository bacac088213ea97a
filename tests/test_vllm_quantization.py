"""Quantization: vLLM's methods reach every linear layer of both decoders
(the model passes `quant_config` down, as vLLM's models do), a method that
cannot apply here is refused at start-up by name, and the fp8 KV cache holds
4x the fp32 entries in the same memory."""
from __future__ import annotations

import pytest
from transformers import AutoConfig

import vllm_block  # noqa: F401  (registers the config with AutoConfig)
from engine import engine, engine_config, greedy_params, token_prompts
from helpers import REPO_ROOT, greedy_cases
from vllm_block.reference import checkpoint_shapes

CASES = greedy_cases()
# fp8 (e4m3: 3 mantissa bits, up to 6% relative error per weight) per output
# channel vs bf16, on the fixture's prompt logprobs: largest and mean error
FP8_LOGPROB_TOL, FP8_MEAN_LOGPROB_TOL = 0.25, 0.05


def parameter_bytes(worker) -> dict[str, tuple[str, int]]:
    """name -> (dtype, bytes) of every parameter of the loaded model."""
    return {n: (str(p.dtype), p.numel() * p.element_size())
            for n, p in worker.model_runner.model.named_parameters()}


def prompt_logprobs(outputs) -> list[list[float]]:
    return [[next(iter(d.values())).logprob if len(d) == 1 else d[t].logprob
             for d, t in zip(o.prompt_logprobs[1:], o.prompt_token_ids[1:])] for o in outputs]


@pytest.mark.engine
def test_fp8_per_channel_quantizes_every_linear_layer_close_to_bf16(tiny_b4_dir, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    prompts = token_prompts(c["prompt"] for c in CASES)
    params = greedy_params(1, logprobs=None, prompt_logprobs=0)
    results = {}
    for method in (None, "fp8_per_channel"):
        with engine(tiny_b4_dir, dtype="bfloat16", quantization=method) as llm:
            (weights,) = llm.collective_rpc(parameter_bytes)
            results[method] = weights, prompt_logprobs(llm.generate(prompts, params))
    (_, bf16_lp), (fp8, fp8_lp) = results[None], results["fp8_per_channel"]
    # (vLLM's CPU bf16 GEMM repacks its weights, so sizes come from the checkpoint)
    shapes = checkpoint_shapes(AutoConfig.from_pretrained(tiny_b4_dir))
    linear = [n for n in shapes if n.endswith(".weight") and any(
        k in n for k in ("query_key_value", ".dense", "dense_h_to_4h", "dense_4h_to_h",
                         "expansion"))]
    assert len(linear) == 4 * 4 + 1  # 4 per layer, 2 + 2 layers, and the expansion
    assert all(fp8[n] == ("torch.float8_e4m3fn", shapes[n].numel()) for n in linear), \
        {n: fp8[n] for n in linear}
    saved = sum(shapes[n].numel() for n in linear)  # 2 -> 1 byte per weight
    total = 2 * sum(s.numel() for s in shapes.values())
    errors = [abs(a - b) for x, y in zip(bf16_lp, fp8_lp, strict=True)
              for a, b in zip(x, y, strict=True)]
    err, mean = max(errors), sum(errors) / len(errors)
    print(f"fp8_per_channel: {len(linear)} linear weights in fp8, {saved} of {total} bf16 "
          f"weight bytes saved; prompt-logprob error vs bf16: max {err:.3g}, mean {mean:.3g} "
          f"over {len(errors)} positions")
    assert err <= FP8_LOGPROB_TOL and mean <= FP8_MEAN_LOGPROB_TOL


@pytest.mark.parametrize("method", ["fp8", "fp8_per_tensor", "fp8_per_block", "mxfp8",
                                    "int8_per_channel_weight_only"])
def test_method_that_cannot_apply_on_cpu_is_refused_naming_it(tiny_b4_dir, method):
    with pytest.raises(Exception, match=rf"quantization method '{method}' is not supported"):
        engine_config(tiny_b4_dir, dtype="bfloat16", quantization=method)


@pytest.mark.engine
def test_fp8_kv_cache_holds_4x_and_keeps_greedy_on_the_demo_model():
    from vllm import SamplingParams

    model = REPO_ROOT / "models" / "kjv-block-tiny"
    prompts = ["In the beginning God created", "And the LORD spake unto Moses, saying",
               "Blessed are the"]
    params = SamplingParams(temperature=0.0, max_tokens=16, logprobs=0)
    got = {}
    for dtype in ("auto", "fp8"):
        with engine(model, skip_tokenizer_init=False, kv_cache_dtype=dtype,
                    enable_prefix_caching=False) as llm:
            cache = llm.llm_engine.vllm_config.cache_config
            outs = [o.outputs[0] for o in llm.generate(prompts, params)]
            got[dtype] = cache.num_gpu_blocks, [list(o.token_ids) for o in outs], [
                [d[t].logprob for d, t in zip(o.logprobs, o.token_ids)] for o in outs]
    (blocks, tokens, lps), (fp8_blocks, fp8_tokens, fp8_lps) = got["auto"], got["fp8"]
    err = max(abs(a - b) for x, y in zip(lps, fp8_lps) for a, b in zip(x, y))
    print(f"KV pages in 32 MiB: fp32 {blocks}, fp8 {fp8_blocks}; greedy logprob error {err:.3g}")
    assert fp8_blocks >= 4 * blocks - 1
    assert fp8_tokens == tokens
    assert err <= FP8_LOGPROB_TOL
