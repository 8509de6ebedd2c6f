#!/usr/bin/env python3
"""Checks `pytorch_cells.py`'s loops against the golden-variant cases (one layer, one direction:
`tests/golden-variants/<cell>_5_0.safetensors`): the case's weights and initial states loaded,
the loop run in float64, its output compared at every valid step. Exits non-zero on a
difference above TOL, so the PyTorch column of the benchmark times the same equations as
wgpu-rnn.

    python3 benches/pytorch_cells_check.py
"""
import json
import math
import os
import sys

import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(__file__))
import pytorch_cells  # noqa: E402

TOL = 1e-5  # float64 loop against float32-stored float64 references
HERE = os.path.join(os.path.dirname(__file__), "..", "tests", "golden-variants")


def main():
    torch.set_default_dtype(torch.float64)
    worst_all = 0.0
    for cell, cls in pytorch_cells.CELLS.items():
        path = os.path.join(HERE, f"{cell.lower()}_5_0.safetensors")
        with safe_open(path, "pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        i, h = int(meta["input_size"]), int(meta["hidden_size"])
        m = cls(i, h).double()
        with torch.no_grad():
            for name, p in list(m.named_parameters()) + list(m.named_buffers()):
                src = t[name + "_l0"]
                p.copy_(src.to(p.dtype))
        states = json.loads(meta["states"])
        s0 = [t[s + "0"][0].double() for s in states]
        x = t["input"].double()
        with torch.no_grad():
            y = m(x, s0)
        want = t["output"].double()
        worst = 0.0
        for b, n in enumerate(t["lengths"].tolist()):
            d = (y[:n, b] - want[:n, b]).abs().max().item()
            worst = d if math.isnan(d) else max(worst, d)
            if math.isnan(d):
                break
        ok = worst <= TOL
        print(f"{cell:18} max |PyTorch loop - golden| {worst:.2e} {'ok' if ok else 'FAIL'}")
        worst_all = worst if math.isnan(worst) else max(worst_all, worst)
        if not ok:
            worst_all = float("inf")
    sys.exit(0 if worst_all <= TOL else 1)


if __name__ == "__main__":
    main()
