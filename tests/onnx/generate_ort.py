"""Writes random LSTM, GRU and RNN nodes over every attribute into tests/onnx/ort/, in onnx's
backend-test layout, with the expected outputs from onnxruntime's CPU provider.

Covered: direction (forward, reverse, bidirectional), layout 0 and 1 (onnxruntime refuses
layout 1: its cases run the layout-0 node and transpose inputs and results), all 11
activations with and without activation_alpha / activation_beta (their defaults), clip,
input_forget (with and without peepholes), peepholes, linear_before_reset 0 and 1, sequence_lens (lengths 0 among them),
initial_h, initial_c, B present and absent. Run: `pip install onnx onnxruntime numpy`, then
`python3 tests/onnx/generate_ort.py` (written with onnx 1.23.2, onnxruntime 1.32.0, seed 29).
"""

import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ort")
ACTS = ["Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
        "HardSigmoid", "Elu", "Softsign", "Softplus"]
TAKES = {"Affine": 2, "ScaledTanh": 2, "HardSigmoid": 2, "LeakyRelu": 1, "ThresholdedRelu": 1, "Elu": 1}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
PER = {"LSTM": 3, "GRU": 2, "RNN": 1}
DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def node_model(op, attrs, names, outs):
    node = helper.make_node(op, names, outs, **attrs)
    ins = [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT, None)
           for n in names if n]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs if o])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


# The activations are dealt from a cycle over all 11, so each appears in several cases.
DEAL = [0]


def deal():
    DEAL[0] += 1
    return ACTS[(DEAL[0] * 4) % len(ACTS)]


def case(rng, k, op, feature):
    d_name = rng.choice(["forward", "reverse", "bidirectional"])
    d = 2 if d_name == "bidirectional" else 1
    t, b, i, h = int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 7))
    g = GATES[op]
    attrs = {"hidden_size": h, "direction": d_name}
    f = lambda *s: (rng.standard_normal(s) * 0.8).astype(np.float32)
    inputs = {"X": f(t, b, i), "W": f(d, g * h, i), "R": f(d, g * h, h)}
    if rng.random() < 0.8:
        inputs["B"] = f(d, 2 * g * h)
    if rng.random() < 0.6:
        lens = rng.integers(0 if rng.random() < 0.3 else 1, t + 1, size=b).astype(np.int32)
        lens[rng.integers(0, b)] = t
        inputs["sequence_lens"] = lens
    if rng.random() < 0.6:
        inputs["initial_h"] = f(d, b, h)
    if op == "LSTM" and rng.random() < 0.6:
        inputs["initial_c"] = f(d, b, h)
    if feature == "activations":
        acts = [deal() for _ in range(PER[op] * d)]
        attrs["activations"] = acts
        if rng.random() < 0.7:
            n_a = sum(1 for a in acts if a in TAKES)
            n_b = sum(1 for a in acts if TAKES.get(a) == 2)
            if n_a:
                attrs["activation_alpha"] = [float(v) for v in rng.uniform(0.1, 1.5, n_a)]
            if n_b and rng.random() < 0.8:
                attrs["activation_beta"] = [float(v) for v in rng.uniform(-0.5, 1.0, n_b)]
    if feature == "clip" or rng.random() < 0.2:
        attrs["clip"] = float(rng.uniform(0.3, 2.0))
    if op == "LSTM":
        if feature == "peepholes" or rng.random() < 0.3:
            inputs["P"] = f(d, 3 * h)
        if feature == "input_forget":
            attrs["input_forget"] = 1
            if k % 3 == 0 and "activations" not in attrs:
                # input_forget with other gate functions (f = 1 - i whatever the function).
                attrs["activations"] = [deal() for _ in range(3 * d)]
            # Peepholes with input_forget in every other such case.
            if k % 2 == 1 and "P" not in inputs:
                inputs["P"] = f(d, 3 * h)
    if op == "GRU":
        attrs["linear_before_reset"] = int(rng.integers(0, 2))
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][: 8 if op == "LSTM" else 6]
    names = [n if n in inputs else "" for n in order]
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    if rng.random() < 0.3:
        outs[0] = ""
    m = node_model(op, attrs, names, outs)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: inputs[n] for n in names if n}
    results = sess.run(None, feeds)
    batch_major = rng.random() < 0.3
    if batch_major:
        attrs["layout"] = 1
        inputs["X"] = inputs["X"].transpose(1, 0, 2).copy()
        for s in ("initial_h", "initial_c"):
            if s in inputs:
                inputs[s] = inputs[s].transpose(1, 0, 2).copy()
        present = [o for o in outs if o]
        results = [r.transpose(2, 0, 1, 3) if o == "Y" else r.transpose(1, 0, 2) for o, r in zip(present, results)]
        m = node_model(op, attrs, names, outs)
    name = f"ort_{k:03d}_{op.lower()}_{feature}_{d_name}{'_batchwise' if batch_major else ''}"
    write(name, m, [inputs[n] for n in names if n], [n for n in names if n], results, [o for o in outs if o])


def write(name, m, inputs, in_names, outputs, out_names):
    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "test_data_set_0"))
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    for kind, arrays, names in (("input", inputs, in_names), ("output", outputs, out_names)):
        for j, (a, n) in enumerate(zip(arrays, names)):
            with open(os.path.join(d, "test_data_set_0", f"{kind}_{j}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.ascontiguousarray(a), n).SerializeToString())


def main() -> None:
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    rng = np.random.default_rng(29)
    k = 0
    for op in ("LSTM", "GRU", "RNN"):
        features = ["plain", "activations", "activations", "activations", "clip", "activations"]
        if op == "LSTM":
            features += ["peepholes", "input_forget", "input_forget", "input_forget"]
        for feature in features * 2:
            case(rng, k, op, feature)
            k += 1
    print(f"{k} cases, onnx {onnx.__version__}, onnxruntime {ort.__version__}, into {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
