#!/usr/bin/env python3
"""Times PyTorch's nn.LSTM / nn.GRU / nn.RNN on the configurations of `wgpu-rnn bench`, the
same way: forward under no_grad (inference) and forward + backward (training), median of
repeats after warm-up. Prints a JSON array in the bench's record format, so its rows can be
merged into the table (`wgpu-rnn bench --merge pytorch.json`).

    python3 benches/pytorch_bench.py --threads 2 [--device cpu|cuda] [--quick] > pytorch.json
    python3 benches/pytorch_bench.py --threads 2 --cells > pytorch-cells.json

`--cells`: the other registered cells at C1 sizes (SRU and MUT1 with I = H = 256, as they need
in == H), each the TorchScript loop of `pytorch_cells.py` (checked against the golden-variant
cases by `pytorch_cells_check.py`), beside PyTorch's own LSTM and GRU. Row names are
`wgpu-rnn bench`'s default names for the same `--config`.
"""
import os
import argparse
import json
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_cells  # noqa: E402

# Kept in step with DEFAULT_CONFIGS in src/bench.rs.
CONFIGS = [
    # name, cell, T, B, I, H, layers, bidirectional
    ("C1", "LSTM", 50, 32, 128, 256, 1, False),
    ("DB-LSTM-H256-B16-T150", "LSTM", 150, 16, 256, 256, 1, False),
    ("DB-LSTM-H512-B16-T25", "LSTM", 25, 16, 512, 512, 1, False),
    ("DB-LSTM-H512-B32-T25", "LSTM", 25, 32, 512, 512, 1, False),
    ("DB-LSTM-H512-B64-T25", "LSTM", 25, 64, 512, 512, 1, False),
    ("DB-GRU-H512-B32-T1", "GRU", 1, 32, 512, 512, 1, False),
    ("DB-GRU-H512-B32-T187s", "GRU", 47, 32, 512, 512, 1, False),
    ("DB-RNN-H32-B1-T672", "RNN_TANH", 672, 1, 32, 32, 1, False),
    ("DB-RNN-H64-B1-T96", "RNN_TANH", 96, 1, 64, 64, 1, False),
    ("C1-GRU", "GRU", 50, 32, 128, 256, 1, False),
]


# --cells: every other registered cell at C1 sizes, named as `wgpu-rnn bench --config
# <cell>,t=50,b=32,i=128,h=256` names its rows.
CELL_CONFIGS = [
    (f"{c}-T50-B32-I{i}-H256", c, 50, 32, i, 256, 1, False)
    for c, i in [("LSTM", 128), ("GRU", 128)] + [(c, 256 if c in ("SRU", "MUT1") else 128) for c in pytorch_cells.CELLS]
]


def macs_per_row(cell, i, h):
    """Multiply-adds per row and direction, as `wgpu-rnn bench` counts them (the cell's input
    projection plus its recurrent products, `Layout::xp * I + product_macs`)."""
    s = max(1, h // 2)
    return {
        "LSTM": 4 * h * (i + h), "LSTM_PEEPHOLE": 4 * h * (i + h), "LSTM_LAYERNORM": 4 * h * (i + h),
        "GRU": 3 * h * (i + h), "LSTM_CIFG": 3 * h * (i + h), "GRU_RESET_BEFORE": 3 * h * (i + h),
        "RNN_TANH": h * (i + h), "RNN_RELU": h * (i + h), "INDRNN": h * i, "SRU": 3 * h * i,
        "MUT1": 2 * h * i + 2 * h * h, "JORDAN": h * i + 2 * h * h, "SCRN": (s + h) * i + h * s + h * h,
        "URNN": h * i + h * h,
    }[cell]


def flops(cell, t, b, i, h, layers, bidir, training):
    d = 2 if bidir else 1
    total = 0
    for l in range(layers):
        inp = i if l == 0 else d * h
        total += d * 2 * t * b * macs_per_row(cell, inp, h)
    return total * (3 if training else 1)


def make(cell, i, h, layers, bidir, device):
    """The module and how to call it on x."""
    if cell in pytorch_cells.CELLS:
        m, _how = pytorch_cells.make(cell, i, h)
        m = m.to(device)
        return m, (lambda x: m(x, []))
    if cell == "LSTM":
        m = torch.nn.LSTM(i, h, layers, bidirectional=bidir)
    elif cell == "GRU":
        m = torch.nn.GRU(i, h, layers, bidirectional=bidir)
    else:
        m = torch.nn.RNN(i, h, layers, nonlinearity="relu" if cell == "RNN_RELU" else "tanh", bidirectional=bidir)
    m = m.to(device)
    return m, (lambda x: m(x)[0])


def timeit(fn, repeats, sync):
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def bench_config(name, cell, t, b, i, h, layers, bidir, dev, sync, quick, adapter):
    """One configuration's rows, forward then training (also `interleave_pytorch.py`'s)."""
    m, call = make(cell, i, h, layers, bidir, dev)
    x = torch.randn(t, b, i, device=dev)
    repeats = 5 if quick else 20

    def fwd():
        with torch.no_grad():
            call(x)

    # The input's gradient too, as wgpu-rnn's backward computes it (oneDNN's LSTM makes it
    # anyway; GRU's costs about 10% more with it).
    xg = x.clone().requires_grad_(True)

    def train():
        m.zero_grad(set_to_none=True)
        xg.grad = None
        call(xg).sum().backward()

    rows = []
    for mode, fn in (("forward", fwd), ("training", train)):
        med, lo, hi = timeit(fn, repeats, sync)
        fl = flops(cell, t, b, i, h, layers, bidir, mode == "training")
        rows.append({
            "name": name, "cell": cell, "t": t, "b": b, "input": i, "hidden": h, "layers": layers,
            "bidirectional": bidir, "device": "pytorch-" + dev.type, "mode": mode,
            "median_ms": med, "min_ms": lo, "max_ms": hi, "gflops": fl / (med * 1e6), "adapter": adapter,
        })
        print(f"{name:24} {mode:9} {med:9.3f} ms  {fl / (med * 1e6):7.1f} GFLOP/s", file=sys.stderr)
    return rows


def setup(threads, device):
    """Threads and device: `(dev, sync, adapter)` for [`bench_config`]."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    adapter = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"PyTorch CPU ({threads} threads)"
    return dev, sync, adapter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma list of configuration names")
    ap.add_argument("--cells", action="store_true", help="every other cell at C1 sizes (TorchScript loops)")
    a = ap.parse_args()
    dev, sync, adapter = setup(a.threads, a.device)
    rows = []
    for c in (CELL_CONFIGS if a.cells else CONFIGS):
        if a.only and c[0] not in a.only.split(","):
            continue
        rows += bench_config(*c, dev, sync, a.quick, adapter)
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
