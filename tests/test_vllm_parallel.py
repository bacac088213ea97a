"""Scaling out through vLLM: tensor parallelism shards both decoders' heads
(and each rank holds 1/TP of the block KV pages and token-decoder states);
data parallelism runs independent engines. On CPU each rank is bound to one
core (VLLM_CPU_OMP_THREADS_BIND="0|1")."""
from __future__ import annotations

import pytest

from engine import check_against_cases, check_against_reference, engine, engine_config, \
    greedy_params, save_model, token_prompts
from helpers import greedy_cases, random_config, random_model
from test_vllm_scheduling import random_prompts
from vllm_block.tools.serving import vllm_serve

CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])


@pytest.mark.engine
def test_tensor_parallel_2_matches_ground_truth(tiny_b4_dir, one_core_per_rank):
    with engine(tiny_b4_dir, tensor_parallel_size=2, distributed_executor_backend="mp") as llm:
        outputs = llm.generate(token_prompts(c["prompt"] for c in CASES), greedy_params(NEW))
    worst = check_against_cases(outputs, CASES, tol=1e-4)
    print(f"TP=2 max logprob error vs ground truth: {worst:.2e}")


@pytest.mark.engine
def test_tensor_parallel_2_on_uneven_decoders_matches_reference(tmp_path, one_core_per_rank):
    # 2 block heads (one per rank), 4 token heads (two per rank), 3 vs 2 layers
    config = random_config(7, block_length=4, prefix_length=3, block_hidden_size=64,
                           block_num_attention_heads=2, block_num_hidden_layers=3,
                           token_hidden_size=48, token_num_attention_heads=4,
                           token_num_hidden_layers=2, block_intermediate_size=130,
                           token_intermediate_size=200)
    model = random_model(config, seed=7)
    path = save_model(model, tmp_path / "model")
    prompts = random_prompts(7, [1, 2, 3, 4, 5, 37], vocab=config.vocab_size)
    with engine(path, tensor_parallel_size=2, distributed_executor_backend="mp") as llm:
        outputs = llm.generate(token_prompts(prompts), greedy_params(11))
    check_against_reference(model, prompts, outputs, tol=1e-4)


def test_heads_that_tp_does_not_divide_are_refused_naming_the_decoder(tmp_path):
    config = random_config(3, block_length=4, block_hidden_size=96,
                           block_num_attention_heads=3, token_num_attention_heads=2,
                           token_hidden_size=32)
    path = save_model(random_model(config), tmp_path / "model")
    with pytest.raises(Exception, match=r"block decoder has 3 attention heads "
                                        r"\(block_num_attention_heads\), which "
                                        r"tensor_parallel_size 2 does not divide"):
        engine_config(path, max_model_len=128, tensor_parallel_size=2)


@pytest.mark.engine
@pytest.mark.parametrize("flag", ["--tensor-parallel-size", "--data-parallel-size"])
def test_vllm_serve_scaled_to_2_answers_with_ground_truth(tiny_b4_tok_dir, tmp_path, flag,
                                                          one_core_per_rank):
    from openai import OpenAI

    with vllm_serve(tiny_b4_tok_dir, "--dtype", "float32", "--max-model-len", "512",
                    flag, "2", log=tmp_path / "server.log", timeout=300) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        for case in CASES[:4]:
            out = client.completions.create(
                model=model, prompt=case["prompt"], max_tokens=NEW, temperature=0.0,
                extra_body={"ignore_eos": True, "return_token_ids": True})
            assert out.choices[0].token_ids == case["greedy"]
