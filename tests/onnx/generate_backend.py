"""Writes the onnx package's backend node tests for LSTM, GRU and RNN into tests/onnx/backend/
in onnx's backend-test layout (model.onnx, test_data_set_0/input_K.pb, output_K.pb).

The cases are onnx's own (onnx/backend/test/case/node/{lstm,gru,rnn}.py, Apache-2.0, see
LICENSE-onnx); this script only runs their generator for the three operators, as
`backend-test-tools generate-data` does for every operator. Run with the onnx package
installed: `python3 tests/onnx/generate_backend.py` (onnx 1.23.2 wrote the files here).
"""

import os
import shutil
import sys

import onnx
from onnx import numpy_helper
from onnx.backend.test.case import node

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend")


def write(case) -> None:
    d = os.path.join(OUT, case.name)
    os.makedirs(d)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(case.model.SerializeToString())
    for i, (inputs, outputs) in enumerate(case.data_sets):
        ds = os.path.join(d, f"test_data_set_{i}")
        os.makedirs(ds)
        for kind, arrays, infos in (
            ("input", inputs, case.model.graph.input),
            ("output", outputs, case.model.graph.output),
        ):
            for j, a in enumerate(arrays):
                t = numpy_helper.from_array(a, infos[j].name)
                with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                    f.write(t.SerializeToString())


def main() -> None:
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    n = 0
    # collect_testcases imports the case modules once, so it is asked once, for every operator.
    for case in node.collect_testcases():
        if case.model.graph.node[0].op_type in ("LSTM", "GRU", "RNN"):
            write(case)
            n += 1
    print(f"{n} cases from onnx {onnx.__version__} into {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
