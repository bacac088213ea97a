"""Build the tiny ground-truth fixtures of `tests/fixtures/` with the ORIGINAL code.

Not part of the test suite, and not run with this project's venv: it imports
the original research code (itsnamgyu/block-transformer at commit 17842dd)
and needs its environment (torch, transformers==4.39.3, omegaconf,
safetensors). Nothing here imports `vllm_block`.

    git --git-dir=<clone>/.git archive 17842dd | tar -x -C /tmp/orig
    python3.11 -m venv /tmp/orig-venv
    /tmp/orig-venv/bin/pip install torch transformers==4.39.3 safetensors omegaconf pyyaml
    /tmp/orig-venv/bin/python scripts/make_original_fixtures.py --source /tmp/orig \
        --out tests/fixtures --check-shared ../shared/fixtures/original_tiny_b4

`--check-shared` first rebuilds the ground truth of `original_tiny_b4` (whose
weights are given) with this script's pipeline and fails unless it matches
that fixture, so the new fixtures are made exactly the same way.

How each fixture is made (the same recipe as `original_tiny_b4`): the yaml
is loaded with OmegaConf, run through the original `preprocess_config` and
`load_block_transformer_from_config` (fp32, CPU, eager attention; the hub
config of `EleutherAI/pythia-410m-deduped` is supplied locally, the
tokenizer is not needed), random init, then weights x3, layer norms
1 + N(0, 0.1) / N(0, 0.1) and biases N(0, 0.02) so that outputs depend on
the prompt. Every logit comes from the original `BlockTransformer.forward()`
over whole blocks with all-ones masks, in the fixture's alignment:

- pad:   block_length - 1 tokens of id 0 precede every prompt;
- nopad: blocks start at the first prompt token; a prompt shorter than
         block_length is left-padded with id 0 to exactly one block (what
         the original `generate()` does).
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# config.json of EleutherAI/pythia-410m-deduped (the base both decoders start from)
PYTHIA_410M_DEDUPED = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
    "hidden_act": "gelu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "gpt_neox", "num_attention_heads": 16, "num_hidden_layers": 24,
    "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "use_cache": True, "use_parallel_residual": True, "vocab_size": 50304,
}
PAD_ID = 0  # pythia: pad = eos = bos = 0
NUM_NEW = 14
SCALE = 3.0  # original_tiny_b4's factor (its weights have std 0.06 = 3 x 0.02)
TOP = 5
MIN_GAP = 2e-3  # least top-1 / top-2 log-prob gap of every greedy step

COMMON_TAIL = """
tokenizer:
  embedder: pythia
  token_decoder: pythia

token_decoding_loss:
  enable: true

block_decoding_loss:
  enable: false
  weight: 1.0

auto_encoding_loss:
  enable: false
  weight: 1.0
"""


def decoder_yaml(name: str, extra: str, layers: int, hidden: int, heads: int, vocab: int) -> str:
    return f"""
{name}:
  cls: gpt-neo-x
  model_name_or_path: EleutherAI/pythia-410m-deduped
  use_pretrained_weights: False
{extra}  config:
    num_hidden_layers: {layers}
    hidden_size: {hidden}
    num_attention_heads: {heads}
    vocab_size: {vocab}
"""


def fixture_yaml(name: str, *, L: int, embed_hidden: int, projection: str,
                 block: tuple[int, int, int], token: tuple[int, int, int],
                 token_extra: str, padding: str, vocab: int = 256) -> str:
    head = f"""name: {name}

block_length: {L}
block_split:
  distribution: fixed
  distribution_kwargs:
    length: {L}
max_length: 2048
precision: fp32
{padding}"""
    embedder = f"""
embedder:
  cls: lookup
  model_name_or_path: null
  n_embedding_tokens: 1
  use_pretrained_weights: False
  projection_method: {projection}
  config:
    vocab_size: {vocab}
    hidden_size: {embed_hidden}
"""
    return (head + embedder
            + decoder_yaml("block_decoder", "  loss_name: null\n  attn_implementation: "
                           "flash_attention_2\n", *block, vocab)
            + decoder_yaml("token_decoder", token_extra, *token, vocab)
            + COMMON_TAIL)


PREFIX_R2 = ("  expansion_method: expansion_layer\n  expansion_ratio: 2\n"
             "  decoding_strategy: prefix\n")
FIXTURES = {
    # family (1): a main model trained without first-block padding (block_main_b4_{300,800,1.2b})
    "nopad_b4": dict(
        alignment="nopad", seed=1,
        yaml=fixture_yaml("nopad_b4", L=4, embed_hidden=8, projection="concat",
                          block=(2, 32, 2), token=(2, 32, 2), token_extra=PREFIX_R2,
                          padding="random_pad_first_block: false\npad_to_block_boundary: false\n")),
    # family (2): uptrained from a vanilla model, Conv1d projection embedder (block_uptrain_b4_*)
    "uptrain_b4": dict(
        alignment="pad", seed=2,
        yaml=fixture_yaml("uptrain_b4", L=4, embed_hidden=24, projection="projection_layer",
                          block=(2, 32, 2), token=(2, 32, 2), token_extra=PREFIX_R2,
                          padding="random_pad_first_block: true\npad_to_block_boundary: true\n")),
    # family (3): MEGABYTE-style summation, narrower token decoder (block_megabyte_b4_*);
    # random_pad_first_block absent and < 300M parameters, as the released configs: pad
    "megabyte_b4": dict(
        alignment="pad", seed=3,
        yaml=fixture_yaml("megabyte_b4", L=4, embed_hidden=12, projection="concat",
                          block=(2, 48, 3), token=(2, 32, 2),
                          token_extra="  expansion_method: expansion_layer\n"
                                      "  decoding_strategy: summation\n",
                          padding="")),
    # family (4): block length 1, one prefix vector (block_vanilla_ablation_b1_85)
    "b1": dict(
        alignment="pad", seed=4,
        yaml=fixture_yaml("b1", L=1, embed_hidden=32, projection="concat",
                          block=(2, 32, 2), token=(2, 32, 2),
                          token_extra="  expansion_method: expansion_layer\n  expansion_ratio: 1\n"
                                      "  decoding_strategy: prefix\n",
                          padding="random_pad_first_block: true\npad_to_block_boundary: true\n")),
}


# -- the original code ---------------------------------------------------------
def import_original(source: Path):
    """Import the original modules offline: hub config and tokenizers are stubbed."""
    sys.path.insert(0, str(source))
    tok = types.ModuleType("util.tokenizer")  # the real one downloads 5 tokenizers at import
    tok.load_tokenizer_and_mapper_from_block_config = lambda cfg: (None, None)
    tok.load_tokenizer_from_vanilla_config = lambda cfg: None
    sys.modules["util.tokenizer"] = tok

    import transformers
    from transformers import GPTNeoXConfig

    real = transformers.AutoConfig.from_pretrained

    def from_pretrained(name, *args, **kwargs):
        if name != "EleutherAI/pythia-410m-deduped":
            return real(name, *args, **kwargs)
        return GPTNeoXConfig.from_dict(dict(PYTHIA_410M_DEDUPED), **kwargs)

    transformers.AutoConfig.from_pretrained = from_pretrained
    from model.utils import load_block_transformer_from_config
    from util.config import preprocess_config
    return preprocess_config, load_block_transformer_from_config


def build_model(yaml_text: str, original) -> tuple[torch.nn.Module, int]:
    from omegaconf import OmegaConf, open_dict

    preprocess_config, load_block_transformer_from_config = original
    cfg = OmegaConf.create(yaml_text)
    with open_dict(cfg):
        for section in ("embedder", "block_decoder", "token_decoder"):
            cfg[section].attn_implementation = "eager"
        for loss in ("token_decoding_loss", "block_decoding_loss"):  # training-only
            if loss not in cfg:
                cfg[loss] = {"enable": loss == "token_decoding_loss", "weight": 1.0}
    preprocess_config(cfg, check_mode="block")
    model, _ = load_block_transformer_from_config(cfg)
    return model.float().eval(), cfg.block_length


def scale_weights(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Make outputs depend on the prompt (random init alone gives near-uniform logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "layernorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:
                p.mul_(scale)


def original_forward(model, ids: torch.Tensor, L: int) -> torch.Tensor:
    """[B, n*L] -> the original forward()'s logits [B, n-1, L, V] (all-ones masks)."""
    B, T = ids.shape
    blocks = ids.view(B, T // L, L)
    with torch.no_grad():
        out = model(input_ids=blocks, attention_mask=torch.ones_like(blocks),
                    block_attention_mask=torch.ones(B, T // L, dtype=torch.long))
    return out["logits"].float()


def virtual_pad(alignment: str, L: int, prompt_len: int) -> int:
    return L - 1 if alignment == "pad" else max(0, L - prompt_len)


def logprobs_at(model, seq: list[int], L: int) -> torch.Tensor:
    """log-probabilities [len(seq), V]: row i predicts padded index i (None-free
    only from index L on); filler after the sequence is never seen (causal)."""
    n = len(seq) // L + 1
    ids = torch.tensor([seq + [PAD_ID] * (n * L - len(seq))])
    logits = original_forward(model, ids, L)[0].flatten(0, 1)  # predicts indices L..nL-1
    return torch.cat([torch.full((L, logits.shape[-1]), float("nan")),
                      logits.log_softmax(-1)])[:len(seq) + 1]


def greedy_case(model, prompt: list[int], L: int, alignment: str) -> dict:
    p = virtual_pad(alignment, L, len(prompt))
    seq = [PAD_ID] * p + list(prompt)
    prompt_lp = logprobs_at(model, seq, L)
    prompt_logprobs = []
    for t in range(1, len(prompt)):
        row = prompt_lp[p + t]
        prompt_logprobs.append(None if p + t < L else row[prompt[t]].item())
    steps, greedy = [], []
    for _ in range(NUM_NEW):
        lp = logprobs_at(model, seq, L)[len(seq)]
        top = lp.topk(TOP)
        token = top.indices[0].item()
        steps.append({"token": token, "logprob": lp[token].item(),
                      "top5": [[i.item(), v.item()] for v, i in zip(top.values, top.indices)]})
        greedy.append(token)
        seq.append(token)
    return {"prompt": list(prompt), "virtual_pad": p, "greedy": greedy, "steps": steps,
            "prompt_logprobs": prompt_logprobs,
            "original_generate": original_generate(model, prompt)}


def original_generate(model, prompt: list[int]) -> list[int] | None:
    """What the original generate() produces (NOT ground truth, see README)."""
    try:
        out = model.generate(torch.tensor([prompt]), max_length=len(prompt) + NUM_NEW)
    except Exception as e:  # noqa: BLE001 - informational only
        print(f"  original generate() failed: {type(e).__name__}: {e}")
        return None
    return out[0, len(prompt):].tolist()


def prompt_lengths(L: int) -> list[int]:
    return sorted(set(range(1, 3 * L + 1)) | {3 * L + 1, 5 * L + 1, 5 * L + 3})


def make_fixture(name: str, spec: dict, out: Path, original) -> None:
    torch.manual_seed(spec["seed"])
    model, L = build_model(spec["yaml"], original)
    scale_weights(model, spec["seed"], spec.get("scale", SCALE))
    V = model.token_decoder.config.vocab_size
    g = torch.Generator().manual_seed(100 + spec["seed"])
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(spec["yaml"].lstrip())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    n = max(6, 8 // L)
    ids = torch.randint(1, V, (3, n * L), generator=g)
    save_file({"input_ids": ids, "logits": original_forward(model, ids, L).contiguous()},
              str(d / "forward.safetensors"))
    cases = []
    for T in prompt_lengths(L):
        while True:  # a near-tie would make "greedy exact" depend on round-off
            prompt = torch.randint(1, V, (T,), generator=g).tolist()
            case = greedy_case(model, prompt, L, spec["alignment"])
            if min(s["top5"][0][1] - s["top5"][1][1] for s in case["steps"]) >= MIN_GAP:
                break
        cases.append(case)
    desc = {"pad": "block_length-1 tokens of id 0 precede the prompt",
            "nopad": "blocks start at the first prompt token; a prompt shorter than "
                     "block_length is left-padded with id 0 to one whole block"}
    (d / "greedy.json").write_text(json.dumps(
        {"alignment": spec["alignment"], "alignment_rule": desc[spec["alignment"]],
         "cases": cases}) + "\n")
    print(f"wrote {d}: {len(cases)} cases, L={L}, V={V}")


def check_shared(shared: Path, original) -> None:
    """Rebuild original_tiny_b4's ground truth from its weights; fail on any mismatch."""
    model, L = build_model((shared / "config.yaml").read_text(), original)
    missing, unexpected = model.load_state_dict(load_file(str(shared / "model.safetensors")),
                                                strict=False)
    assert not unexpected and all("bias" in k or "inv_freq" in k for k in missing), \
        (missing, unexpected)
    fwd = load_file(str(shared / "forward.safetensors"))
    err = (original_forward(model, fwd["input_ids"], L) - fwd["logits"]).abs().max().item()
    assert err < 1e-4, f"forward differs from {shared} by {err}"
    worst = 0.0
    for case in json.loads((shared / "greedy.json").read_text())["cases"]:
        got = greedy_case(model, case["prompt"], L, "pad")
        assert got["greedy"] == case["greedy"], (case["prompt"], got["greedy"], case["greedy"])
        for a, b in zip(got["steps"], case["steps"]):
            worst = max(worst, *(abs(x[1] - y[1]) for x, y in zip(a["top5"], b["top5"])))
        worst = max([worst] + [abs(a - b) for a, b in
                               zip(got["prompt_logprobs"], case["prompt_logprobs"])])
        assert got["original_generate"] == case["original_generate"], case["prompt"]
    assert worst < 1e-4, f"greedy.json log-probs differ by {worst}"
    print(f"check: {shared.name} reproduced (forward {err:.1e}, greedy.json {worst:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True,
                    help="the original code at commit 17842dd (an extracted tree)")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    ap.add_argument("--check-shared", type=Path, default=None,
                    help="original_tiny_b4 dir to reproduce first")
    ap.add_argument("--only", nargs="*", default=None, help="fixture names to build")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import transformers
    transformers.logging.set_verbosity_error()  # generate()'s right-padding warning
    original = import_original(args.source.resolve())
    if args.check_shared:
        check_shared(args.check_shared, original)
    for name, spec in FIXTURES.items():
        if args.only is None or name in args.only:
            make_fixture(name, spec, args.out, original)


if __name__ == "__main__":
    main()
