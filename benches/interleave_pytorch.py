#!/usr/bin/env python3
"""wgpu-rnn's CPU engine against PyTorch's CPU, alternated configuration by configuration.

`compare_pytorch.py` reads rounds of whole tables: `wgpu-rnn bench` over every configuration,
then `pytorch_bench.py` over every configuration, a few minutes apart. On a machine whose rate
moves 25-30% from one minute to the next (the shared 2-core VM of issue 30: the same product
ran at 88-98 GFLOP/s in one minute, 115-125 a few minutes later), a ratio taken minutes apart
carries that drift. Here each configuration is timed by both within seconds: wgpu-rnn's
release binary in a child process (`bench --device cpu --config ...,name=NAME`, with the
default table's name) and PyTorch in this process, the one that goes first alternating by
configuration and round. The files it writes are `compare_pytorch.py`'s:

    python3 benches/interleave_pytorch.py --bin target/release/wgpu-rnn --out DIR [--rounds 3] [--prefix i] [--threads 2] [--only C1,C1-GRU] [--cells]
    python3 benches/compare_pytorch.py DIR i

Each `bench` process times wgpu-rnn's own GEMM first; a round's file keeps the median of those
rates as its one GEMM row (`compare_pytorch.py`'s "% GEMM").
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_bench  # noqa: E402


def spec(name, cell, t, b, i, h, layers, bidir):
    """The `--config` of one configuration, under its default-table name."""
    s = f"{cell.lower()},t={t},b={b},i={i},h={h},layers={layers},name={name}"
    return s + (",bidir" if bidir else "")


def ours(binary, config, threads, quick):
    """wgpu-rnn's rows for one configuration (its GEMM row included), from a child process."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ours.json")
        cmd = [binary, "bench", "--device", "cpu", "--config", spec(*config), "--json", out] + (["--quick"] if quick else [])
        env = dict(os.environ, MATMUL_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="wgpu-rnn's release binary")
    ap.add_argument("--out", required=True, help="directory for ours-PREFIX-R.json and torch-PREFIX-R.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefix", default="i")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma list of configuration names")
    ap.add_argument("--cells", action="store_true", help="the other cells at C1 sizes (pytorch_bench.py --cells)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dev, sync, adapter = pytorch_bench.setup(a.threads, "cpu")
    configs = [c for c in (pytorch_bench.CELL_CONFIGS if a.cells else pytorch_bench.CONFIGS) if not a.only or c[0] in a.only.split(",")]
    if not configs:
        sys.exit(f"no configuration named in --only {a.only}")
    for r in range(1, a.rounds + 1):
        mine, theirs, gemm = [], [], []
        for k, c in enumerate(configs):
            first_ours = (r + k) % 2 == 1
            for who in (("ours", "torch") if first_ours else ("torch", "ours")):
                if who == "ours":
                    for row in ours(a.bin, c, a.threads, a.quick):
                        (gemm if row["mode"] == "gemm" else mine).append(row)
                else:
                    theirs += pytorch_bench.bench_config(*c, dev, sync, a.quick, adapter)
        # One GEMM row a round: the median rate of the round's bench processes.
        g = dict(gemm[0], gflops=statistics.median(x["gflops"] for x in gemm))
        with open(os.path.join(a.out, f"ours-{a.prefix}-{r}.json"), "w") as f:
            json.dump([g] + mine, f, indent=1)
        with open(os.path.join(a.out, f"torch-{a.prefix}-{r}.json"), "w") as f:
            json.dump(theirs, f, indent=1)
        print(f"round {r} of {a.rounds} written", file=sys.stderr)


if __name__ == "__main__":
    main()
