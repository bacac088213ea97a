"""Model dimensions of the paper's models and their costs, computed from specs.

Dimensions come from the original repository's `conf/trainer/*.yaml`
(itsnamgyu/block-transformer): `block_main_b4_<N>` (N = non-embedding
parameters in millions) and `vanilla_<N>` (N = total parameters; the
70/160/410 configs are Pythia-70m/160m/410m-deduped, vanilla_31 is 6 x 256).
All use the Pythia vocabulary (50304), rotary_pct 0.25, parallel residual,
intermediate = 4 x hidden.

Everything here is arithmetic (no torch, no vLLM), so the GPU scripts and the
tests share it: parameter counts (checked against real modules by
tests/test_benchmarks.py), multiply-accumulates and bytes moved per step,
cache bytes per request, and the roofline limit of a workload.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

VOCAB = 50304


@dataclass(frozen=True)
class Vanilla:
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int = VOCAB
    kind: str = "vanilla"

    # -- parameters ---------------------------------------------------------
    def layer_params(self) -> int:
        H = self.hidden
        return 12 * H * H + 13 * H  # qkv, dense, mlp (with biases), two layer norms

    def params(self) -> int:
        return 2 * self.vocab * self.hidden + self.layers * self.layer_params() + 2 * self.hidden

    # -- costs of one generated token ----------------------------------------
    def decode_macs(self, context: float) -> float:
        """MACs to generate one token at `context` (linear layers + LM head + attention)."""
        H = self.hidden
        return self.layers * (12 * H * H + 2 * context * H) + self.vocab * H

    def prefill_macs(self, prompt: int) -> float:
        """MACs to prefill one prompt (causal attention; logits of the last token only)."""
        H = self.hidden
        return self.layers * (12 * H * H * prompt + H * prompt * prompt) + self.vocab * H

    def weight_bytes_per_step(self, nbytes: int) -> float:
        """Weights read by one decode step (embeddings: only the gathered rows)."""
        return (self.layers * self.layer_params() + self.vocab * self.hidden) * nbytes

    def kv_bytes_per_token(self, nbytes: int) -> int:
        return self.layers * 2 * self.hidden * nbytes

    def cache_bytes(self, context: int, nbytes: int) -> int:
        """KV-cache bytes of one request holding `context` tokens."""
        return context * self.kv_bytes_per_token(nbytes)

    def cache_read_per_step(self, context: float, nbytes: int) -> float:
        return context * self.kv_bytes_per_token(nbytes)

    def hf_config(self) -> dict:
        return dict(vocab_size=self.vocab, hidden_size=self.hidden,
                    num_hidden_layers=self.layers, num_attention_heads=self.heads,
                    intermediate_size=4 * self.hidden, rotary_pct=0.25,
                    max_position_embeddings=2048, use_parallel_residual=True,
                    tie_word_embeddings=False, hidden_act="gelu")

    def gptj_config(self) -> dict:
        head_dim = self.hidden // self.heads
        return dict(vocab_size=self.vocab, n_embd=self.hidden, n_layer=self.layers,
                    n_head=self.heads, rotary_dim=int(0.25 * head_dim), n_inner=4 * self.hidden,
                    n_positions=2048, activation_function="gelu", tie_word_embeddings=False)


@dataclass(frozen=True)
class Block:
    name: str
    block_layers: int
    block_hidden: int
    token_layers: int
    token_hidden: int
    block_length: int = 4
    prefix_length: int = 2
    vocab: int = VOCAB
    kind: str = "block"

    @staticmethod
    def _layer(H: int) -> int:
        return 12 * H * H + 13 * H

    @property
    def embedder_hidden(self) -> int:
        return self.block_hidden // self.block_length

    def heads(self, H: int) -> int:  # the original's default (config.default_num_attention_heads)
        return max(1, H // 32) if H <= 256 else H // 64 if H <= 1536 else H // 128

    def expansion_params(self) -> int:
        R, Hb, Ht = self.prefix_length, self.block_hidden, self.token_hidden
        return Hb * R * Ht + R * Ht

    def params(self) -> int:
        V, Hb, Ht = self.vocab, self.block_hidden, self.token_hidden
        return (V * self.embedder_hidden
                + self.block_layers * self._layer(Hb) + 2 * Hb
                + self.expansion_params()
                + V * Ht + self.token_layers * self._layer(Ht) + 2 * Ht
                + V * Ht)

    # -- costs of one generated token (averaged over a block) -----------------
    def decode_macs(self, context: float) -> float:
        """Average MACs per generated token at `context`: every L tokens one
        block-decoder step (attending over context / L entries) and one restart
        of the token decoder from its R prefix vectors; per token the token
        decoder (window <= R + L - 1) and the LM head."""
        L, R, Hb, Ht = self.block_length, self.prefix_length, self.block_hidden, self.token_hidden
        block = self.block_layers * (12 * Hb * Hb + 2 * (context / L) * Hb) + Hb * R * Ht
        window = (R + L) / 2
        token = self.token_layers * (12 * Ht * Ht * (L - 1 + R) / L + 2 * window * Ht)
        return block / L + token + self.vocab * Ht

    def prefill_macs(self, prompt: int) -> float:
        L, R, Hb, Ht = self.block_length, self.prefix_length, self.block_hidden, self.token_hidden
        n = prompt / L
        block = self.block_layers * (12 * Hb * Hb * n + Hb * n * n)
        token = self.token_layers * 12 * Ht * Ht * (R + L - 1) + Hb * R * Ht
        return block + token + self.vocab * Ht

    def weight_bytes_per_step(self, nbytes: int) -> float:
        """Average weights read per decode step: the token decoder and LM head
        every step, the block decoder and expansion on 1 step in L (requests
        in phase, as when all prompts have the same length)."""
        V, Ht = self.vocab, self.token_hidden
        every = self.token_layers * self._layer(Ht) + V * Ht
        sometimes = self.block_layers * self._layer(self.block_hidden) + self.expansion_params()
        return (every + sometimes / self.block_length) * nbytes

    def block_kv_bytes_per_entry(self, nbytes: int) -> int:
        return self.block_layers * 2 * self.block_hidden * nbytes

    def token_state_bytes(self, nbytes: int) -> int:
        """Token-decoder state per request (vLLM plugin's MambaSpec shapes):
        per layer K/V of R + L - 1 entries and L - 1 pending embedding pieces."""
        R, L = self.prefix_length, self.block_length
        per_layer = 2 * (R + L - 1) * self.token_hidden + (L - 1) * self.embedder_hidden
        return self.token_layers * per_layer * nbytes

    def cache_bytes(self, context: int, nbytes: int) -> int:
        blocks = (context + self.block_length - 1) // self.block_length  # complete blocks
        return blocks * self.block_kv_bytes_per_entry(nbytes) + self.token_state_bytes(nbytes)

    def cache_read_per_step(self, context: float, nbytes: int) -> float:
        return (context / self.block_length * self.block_kv_bytes_per_entry(nbytes)
                / self.block_length + self.token_state_bytes(nbytes))

    def block_config(self) -> dict:
        return dict(block_length=self.block_length, prefix_length=self.prefix_length,
                    vocab_size=self.vocab, max_position_embeddings=2048,
                    block_num_hidden_layers=self.block_layers,
                    block_hidden_size=self.block_hidden,
                    token_num_hidden_layers=self.token_layers,
                    token_hidden_size=self.token_hidden)


MODELS = {m.name: m for m in [
    Vanilla("vanilla_31", 6, 256, 8),
    Vanilla("vanilla_70", 6, 512, 8),      # EleutherAI/pythia-70m-deduped
    Vanilla("vanilla_160", 12, 768, 12),   # EleutherAI/pythia-160m-deduped
    Vanilla("vanilla_410", 24, 1024, 16),  # EleutherAI/pythia-410m-deduped
    Block("block_main_b4_5", 3, 256, 3, 256),
    Block("block_main_b4_19", 3, 512, 3, 512),
    Block("block_main_b4_85", 6, 768, 6, 768),
    Block("block_main_b4_300", 12, 1024, 12, 1024),
    Block("block_main_b4_800", 8, 2048, 8, 2048),
    Block("block_main_b4_1.2b", 12, 2048, 12, 2048),
    # tiny models for the test of the benchmark code path (not from the paper)
    Vanilla("tiny_vanilla", 2, 64, 2, vocab=512),
    Block("tiny_block", 1, 64, 1, 64, vocab=512),
]}

# The paper's Table 1 pairs (similar perplexity) and its measured throughput
# ratios block / vanilla (H100, bf16, batch maximised, HF-based generation):
# (vanilla, block, prefill-heavy 2048->128, decode-heavy 128->2048).
PAPER_PAIRS = [
    ("vanilla_70", "block_main_b4_85", 8.6, 7.1),      # 70M  vs 170M
    ("vanilla_160", "block_main_b4_300", 9.1, 7.1),    # 160M vs 420M
    ("vanilla_410", "block_main_b4_1.2b", 15.5, 12.2),  # 410M vs 1.4B
]


def pages_per_request(model, length: int, page_tokens: int) -> int:
    """vLLM 0.32's KV pages for one request of `length` tokens. A block model's
    layers are grouped by kind in groups of the smaller layer count; each
    block-decoder group takes the request's pages of block entries, each
    token-decoder state group one page (its bounded window)."""
    kv = -(-length // page_tokens)
    if model.kind != "block":
        return kv
    group = min(model.block_layers, model.token_layers)
    return kv * -(-model.block_layers // group) + -(-model.token_layers // group)


def requests_held(model, length: int, pages: int, page_tokens: int) -> int:
    """Requests of `length` tokens whose pages fit at once (vLLM keeps one of
    its pages as the null page)."""
    return (pages - 1) // pages_per_request(model, length, page_tokens)


def decode_step(model, context: float, batch: int, nbytes: int) -> tuple[float, float]:
    """MACs and bytes moved (weights read once, every request's cache) of one
    decode step of `batch` requests at `context`."""
    return (batch * model.decode_macs(context),
            model.weight_bytes_per_step(nbytes)
            + batch * model.cache_read_per_step(context, nbytes))


def decode_step_limit(model, context: float, batch: int, nbytes: int, peak_flops: float,
                      bandwidth: float) -> dict:
    """Fastest possible decode step of `batch` requests at `context`:
    max(compute time, bytes / bandwidth)."""
    macs, moved = decode_step(model, context, batch, nbytes)
    compute_s, memory_s = 2 * macs / peak_flops, moved / bandwidth
    return {"batch": batch, "context": context, "gmacs_per_step": round(macs / 1e9, 4),
            "mbytes_per_step": round(moved / 1e6, 3),
            "compute_ms": round(compute_s * 1e3, 3), "memory_ms": round(memory_s * 1e3, 3),
            "bound": "compute" if compute_s >= memory_s else "memory",
            "limit_tokens_per_s": round(batch / max(compute_s, memory_s), 1)}


def roofline(model, prompt: int, new: int, requests: int, batch: int, nbytes: int,
             peak_flops: float, bandwidth: float) -> dict:
    """Fastest possible run of `requests` prompts of `prompt` tokens, each
    generating `new` tokens, `batch` at a time: prefill at peak FLOP/s, every
    decode step at max(compute time, bytes / bandwidth)."""
    batch = max(1, min(batch, requests))
    waves = math.ceil(requests / batch)
    prefill_s = requests * 2 * model.prefill_macs(prompt) / peak_flops
    decode_s, macs_total, bytes_total, compute_s, memory_s = 0.0, 0.0, 0.0, 0.0, 0.0
    for w in range(waves):
        b = min(batch, requests - w * batch)
        for t in range(new - 1):  # the first token comes from the prefill
            macs, moved = decode_step(model, prompt + t, b, nbytes)
            c, m = 2 * macs / peak_flops, moved / bandwidth
            decode_s += max(c, m)
            compute_s += c
            memory_s += m
            macs_total += macs
            bytes_total += moved
    steps = waves * max(1, new - 1)
    total = prefill_s + decode_s
    return {
        "batch": batch, "decode_steps": steps,
        "macs_per_decode_step": macs_total / steps, "bytes_per_decode_step": bytes_total / steps,
        "arithmetic_intensity_flop_per_byte": 2 * macs_total / max(bytes_total, 1),
        "prefill_s": prefill_s, "decode_s": decode_s,
        "decode_bound": "compute" if compute_s >= memory_s else "memory",
        "limit_tokens_per_s": requests * new / total,
    }


# Nominal H200 (SXM) figures for the analytic paper-scale limit: dense bf16
# tensor-core FLOP/s and HBM3e bandwidth from the datasheet (not measured).
H200_NOMINAL = {"bf16_flops": 989e12, "bandwidth": 4.8e12}


def paper_scale_limits(requests: int = 256, kv_budget: float = 24 * 2**30,
                       flops: float = H200_NOMINAL["bf16_flops"],
                       bandwidth: float = H200_NOMINAL["bandwidth"]) -> list[dict]:
    """Roofline limits of the paper's pairs and workloads (bf16), each model's
    batch capped by how many full-length requests its cache fits in `kv_budget`."""
    out = []
    for v, b, paper_prefill, paper_decode in PAPER_PAIRS:
        for wl, prompt, new, paper in (("prefill-heavy", 2048, 128, paper_prefill),
                                       ("decode-heavy", 128, 2048, paper_decode)):
            row = {"vanilla": v, "block": b, "workload": wl, "paper_ratio": paper}
            for kind, name in (("vanilla", v), ("block", b)):
                m = MODELS[name]
                batch = min(requests, int(kv_budget // m.cache_bytes(prompt + new, 2)))
                lim = roofline(m, prompt, new, requests, batch, 2, flops, bandwidth)
                row[f"{kind}_batch"] = batch
                row[f"{kind}_limit_tokens_per_s"] = round(lim["limit_tokens_per_s"])
            row["limit_ratio"] = round(row["block_limit_tokens_per_s"]
                                       / row["vanilla_limit_tokens_per_s"], 2)
            out.append(row)
    return out


def decode_parts(model: Block, context: float, batch: int, nbytes: int) -> dict:
    """What each part of one all-decode step of `batch` requests at `context`
    must do at least, averaged over a block (1 request in L closes a block):
    GEMM multiply-accumulates of each decoder and the LM head, and the bytes
    the block decoder's paged attention reads (the closing requests' KV)."""
    L, R, Hb, Ht = model.block_length, model.prefix_length, model.block_hidden, model.token_hidden
    closing = batch / L
    return {
        "block_decoder_gemm_macs": closing * (model.block_layers * 12 * Hb * Hb + Hb * R * Ht),
        "token_decoder_gemm_macs": batch * model.token_layers * 12 * Ht * Ht * (L - 1 + R) / L,
        "lm_head_macs": batch * model.vocab * Ht,
        "block_attention_kv_bytes": closing * (context / L) * model.block_kv_bytes_per_entry(nbytes),
    }
