#!/usr/bin/env python3
"""Tables of wgpu-rnn's CPU engine against PyTorch's CPU from alternated rounds.

Each round is a pair of files, `wgpu-rnn bench --device cpu --json ours-<r>.json` and
`pytorch_bench.py --json > torch-<r>.json`, run one after the other (ours, PyTorch, ours,
...). For every configuration and mode present in both: each round's median, and the ratio of
the medians over the rounds (ours / PyTorch: below 1.0 is faster). Also each round's share of
wgpu-rnn's own GEMM rate (the `gemm` row of the same run) reached by every configuration.

    python3 benches/compare_pytorch.py DIR PREFIX   # reads DIR/ours-PREFIX-<r>.json, DIR/torch-PREFIX-<r>.json
"""
import glob
import json
import math
import os
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    d, prefix = sys.argv[1], sys.argv[2]
    rounds = sorted(int(p.rsplit("-", 1)[1][:-5]) for p in glob.glob(os.path.join(d, f"ours-{prefix}-*.json")))
    ours, torch, gemm = {}, {}, []
    for r in rounds:
        for row in load(os.path.join(d, f"ours-{prefix}-{r}.json")):
            if row["mode"] == "gemm":
                gemm.append(row["gflops"])
                continue
            if row["device"] == "cpu":
                ours.setdefault((row["name"], row["mode"]), []).append(row)
        for row in load(os.path.join(d, f"torch-{prefix}-{r}.json")):
            torch.setdefault((row["name"], row["mode"]), []).append(row)
    print(f"# rounds: {rounds}; wgpu-rnn's GEMM rate per round (GFLOP/s): " + ", ".join(f"{g:.1f}" for g in gemm))
    print(f"{'configuration':36} {'mode':9} {'wgpu-rnn ms (rounds)':>26} {'PyTorch ms (rounds)':>26} {'ratio':>6} {'% GEMM':>7}")
    worst = {}
    for key in ours:
        if key not in torch:
            continue
        o = [x["median_ms"] for x in ours[key]]
        t = [x["median_ms"] for x in torch[key]]
        ratio = statistics.median(o) / statistics.median(t)
        share = statistics.median(x["gflops"] / g for x, g in zip(ours[key], gemm)) if gemm else float("nan")
        name, mode = key
        print(f"{name:36} {mode:9} {' '.join(f'{v:8.2f}' for v in o):>26} {' '.join(f'{v:8.2f}' for v in t):>26} {ratio:5.2f}x {100 * share:6.0f}%")
        if math.isnan(ratio):
            ratio = float("inf")
        worst[key] = ratio
    if worst:
        k = max(worst, key=worst.get)
        print(f"# worst ratio: {worst[k]:.2f}x ({k[0]} {k[1]})")


if __name__ == "__main__":
    main()
