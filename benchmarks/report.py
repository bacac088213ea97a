"""Markdown tables from a throughput JSON (what the README's Benchmarks section shows).

    python benchmarks/report.py [benchmarks/results/throughput_cpu.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


COL = {"block": "vLLM plugin", "block-fast": "vLLM plugin, fast prefill", "vanilla-gptj": "vLLM GPT-J (native)",
       "vanilla-neox": "vLLM GPT-NeoX (Transformers backend)", "hf": "HF reference generate"}


def fmt_m(n: int) -> str:
    return f"{n / 1e6:.0f}M"


def main(path: str) -> None:
    d = json.loads(Path(path).read_text())
    m = d["machine"]
    p = d["peaks"]
    print(f"Machine: {m.get('cpu', m['machine'])}, {m['cpus']} CPUs; torch {m['torch']}, "
          f"vLLM {m['vllm']}, transformers {m['transformers']}. Date: {d['date']}. "
          f"Wall time: {d['wall_seconds'] / 60:.1f} min.\n")
    print(f"Measured peaks: matmul {p['matmul_flops_float32'] / 1e9:.0f} GFLOP/s fp32, "
          f"{p['matmul_flops_bfloat16'] / 1e9:.0f} GFLOP/s bf16 ({p['matmul_size']}^3); "
          f"decode-shaped 32x768x50304: {p['lm_head_32x768x50304_flops_float32'] / 1e9:.0f} fp32, "
          f"{p['lm_head_32x768x50304_flops_bfloat16'] / 1e9:.0f} bf16 GFLOP/s; "
          f"copy bandwidth {p['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s.\n")
    wl = {w["name"]: w for w in d["workloads"]}
    print("Generated tokens/s (median of repeats; HF column: batch "
          f"{d['hf_requests']}, one run):\n")
    print("| dtype | workload | model | params | column | tokens/s | max running | "
          "roofline limit | measured / limit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in d["medians"]:
        w = wl[r["workload"]]
        print(f"| {r['dtype']} | {r['workload']} ({w['prompt']}->{w['new']}, "
              f"{r['requests']} req) | {r['model']} | {fmt_m(r['params'])} | "
              f"{COL[r['column']]} | {r['median_tokens_per_s']:.1f} | {r['max_running']} | "
              f"{r['roofline']['limit_tokens_per_s']:.0f} ({r['roofline']['decode_bound']}) | "
              f"{r['fraction_of_limit']:.2f} |")
    print("\nRatios block / vanilla (same group, same run):\n")
    print("| dtype | workload | block / vanilla | columns | ratio | paper |")
    print("|---|---|---|---|---|---|")
    for r in d["ratios"]:
        print(f"| {r['dtype']} | {r['workload']} | {r['block']} / {r['vanilla']} | "
              f"{COL[r['block_column']]} / {COL[r['vanilla_column']]} | {r['ratio']:.2f}x | "
              f"{str(r['paper_ratio']) + 'x' if r['paper_ratio'] else '-'} |")
    print(f"\nKV memory (budget {d['kv_budget_bytes'] >> 20} MiB per engine):\n")
    print("| model | dtype | vLLM KV capacity (tokens) | cache bytes / request at 256 / 512 / "
          "1024 / 2048 tokens |")
    print("|---|---|---|---|")
    for name, mem in d["memory"].items():
        for e in mem["vllm"]:
            if "kv_capacity_tokens" not in e or e["column"] == "vanilla-neox":
                continue
            per = mem["cache_bytes_per_request"].get(e["dtype"], {})
            print(f"| {name} ({COL[e['column']]}) | {e['dtype']} | {e['kv_capacity_tokens']} | "
                  + " / ".join(f"{v / 2**20:.2f} MiB" for v in per.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "results" / "throughput_cpu.json"))
