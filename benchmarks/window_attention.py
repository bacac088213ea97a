"""The exact step's two token-decoder attentions side by side (one process,
alternated, one thread): per window (`window_attention.window_attention`) vs per row
(`window_attention.row_attention`), on the step plans of prefill and decode steps of
`block_main_b4_85`'s token decoder (12 heads x 64, L=4, R=2). The model picks
per window when 2 x rows >= windows x (R+L-1); this measures that choice.

    python benchmarks/window_attention.py

Writes benchmarks/results/window_attention.json.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vllm_block.window_attention import row_attention, window_attention
from vllm_block.step_plan import build_step_plan

L, R, HEADS, HEAD_DIM = 4, 2, 12, 64
S = R + L - 1
STEPS = {  # name: (query_start_loc, seq_lens)
    "prefill 8 x 256": (np.arange(9) * 256, np.full(8, 256)),
    "prefill 2 x 2048": (np.arange(3) * 2048, np.full(2, 2048)),
    "decode 64": (np.arange(65), np.arange(64) * 7 + 100),
}


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    results = []
    for name, (qsl, seq) in STEPS.items():
        plan = build_step_plan(qsl, seq, L, R).to(torch.device("cpu"))
        M, W = len(plan.row_pos), len(plan.win_req)
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(M, HEADS, HEAD_DIM, dtype=dtype)
            buf = torch.randn(W, 2, S, HEADS, HEAD_DIM, dtype=dtype)
            per_window, per_row = [], []
            for _ in range(9):
                per_window.append(timed(window_attention, q, buf, plan.row_win, plan.row_pos))
                per_row.append(timed(row_attention, q, buf, plan.row_win, plan.row_hidden))
            ratios = [r / w for r, w in zip(per_row, per_window)]
            results.append({
                "step": name, "dtype": str(dtype).removeprefix("torch."), "rows": M,
                "windows": W, "model_picks": "window" if 2 * M >= W * S else "row",
                "per_window_ms": round(statistics.median(per_window) * 1e3, 3),
                "per_row_ms": round(statistics.median(per_row) * 1e3, 3),
                "per_row / per_window (median, min, max)":
                    [round(statistics.median(ratios), 2), round(min(ratios), 2),
                     round(max(ratios), 2)]})
            print(results[-1])
    out = Path(__file__).resolve().parent / "results" / "window_attention.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
