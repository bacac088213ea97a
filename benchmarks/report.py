"""Markdown tables from a throughput JSON (what docs/benchmarks.md shows).

    python benchmarks/report.py [benchmarks/results/throughput_cpu.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


COL = {"block": "vLLM plugin", "block-fast": "vLLM plugin, fast prefill",
       "vanilla-gptj": "vLLM GPT-J (native), vLLM defaults",
       "vanilla-gptj-eager": "vLLM GPT-J (native), enforce_eager",
       "vanilla-neox": "vLLM GPT-NeoX (Transformers backend), vLLM defaults",
       "hf": "reference generate (static batch)"}


def fmt_m(n: int) -> str:
    return f"{n / 1e6:.0f}M"


def header(d: dict) -> None:
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


def settings(d: dict) -> None:
    """Which graph / compile mode each vLLM column ran with (the engines' own report)."""
    seen = sorted({(COL[e["column"]], e["setting"]) for e in d["engines"] if "setting" in e})
    print("Engine settings: " + "; ".join(f"{c}: {s}" for c, s in seen) + ".\n")


def medians(d: dict, table: str) -> None:
    budgets = sorted({g["kv_budget_bytes"] / 2**20 for g in d["groups"].values()
                      if g["table"] == table})
    print(f"**{table}** (KV budget per engine: {' / '.join(f'{b:g}' for b in budgets)} MiB). "
          "Generated "
          "tokens/s (median of repeats), maximum concurrency reached, KV pages and the "
          "requests of the workload's length they hold:\n")
    print("| dtype | workload | model | params | column | tokens/s | max running | KV pages "
          "(fits requests) | roofline limit | measured / limit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in d["medians"]:
        if r["table"] != table:
            continue
        kv = f"{r['kv_pages']} ({r['fits_requests']})" if "kv_pages" in r else "-"
        print(f"| {r['dtype']} | {r['workload']} ({r['prompt']}->{r['new']}, "
              f"{r['requests']} req) | {r['model']} | {fmt_m(r['params'])} | "
              f"{COL[r['column']]} | {r['median_tokens_per_s']:.1f} | {r['max_running']} | "
              f"{kv} | {r['roofline']['limit_tokens_per_s']:.0f} "
              f"({r['roofline']['decode_bound']}) | {r['fraction_of_limit']:.2f} |")
    print()


def ratios(d: dict, table: str) -> None:
    print(f"Ratios block / vanilla ({table}, same group, same run):\n")
    print("| dtype | workload | block / vanilla | columns | ratio | paper |")
    print("|---|---|---|---|---|---|")
    for r in d["ratios"]:
        if r["table"] != table:
            continue
        print(f"| {r['dtype']} | {r['workload']} | {r['block']} / {r['vanilla']} | "
              f"{COL[r['block_column']]} / {COL[r['vanilla_column']]} | {r['ratio']:.2f}x | "
              f"{str(r['paper_ratio']) + 'x' if r['paper_ratio'] else '-'} |")
    print()


def reference(d: dict) -> None:
    rows = d.get("plugin_vs_reference", [])
    if not rows:
        return
    print("Plugin / reference model (the original code's cached generation, static batch; "
          "same block model, same run):\n")
    print("| table | dtype | workload | model | plugin column | plugin tokens/s (max running) "
          "| reference tokens/s (batch, new tokens) | plugin / reference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['table']} | {r['dtype']} | {r['workload']} | {r['model']} | "
              f"{COL[r['column']]} | {r['plugin_tokens_per_s']:.1f} ({r['plugin_max_running']}) "
              f"| {r['reference_tokens_per_s']:.1f} ({r['reference_batch']}, "
              f"{r['reference_new']} of {r['plugin_new']}) | "
              f"{r['ratio']:.2f}x |")
    print()


def main(path: str) -> None:
    d = json.loads(Path(path).read_text())
    d["engines"] = [e for mem in d["memory"].values() for e in mem["vllm"]]
    header(d)
    settings(d)
    for table in sorted({g["table"] for g in d["groups"].values()}):
        medians(d, table)
        ratios(d, table)
    reference(d)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "results" / "throughput_cpu.json"))
