"""onnxq.rewrite.compact: a smaller file, bit-identical outputs, the same fused graph, names kept."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxq
from builders import cnn_data, tiny_cnn
from onnxq.rewrite import compact as compact_module
from onnxq.rewrite.compact import TRACE_KEYS, compact


def _torch_like(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the debug metadata torch's dynamo exporter writes on its nodes (and which ONNX
    Runtime's quantizer keeps on the nodes it does not replace, as on EfficientNet-Lite1)."""
    for index, node in enumerate(model.graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for key, value in (("pkg.torch.onnx.name_scopes", f"['', 'block{index}', '{node.op_type.lower()}']"),
                           ("pkg.torch.onnx.class_hierarchy", "['Net', 'torch.nn.modules.conv.Conv2d', 'aten.x']"),
                           ("pkg.torch.onnx.stack_trace", 'File "model.py", line 12, in forward\n' * 20),
                           ("pkg.torch.onnx.fx_node", "%conv2d : [num_users=1] = call_function" * 5),
                           ("onnxq.framework_name", f"layer{index}")):
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
        node.doc_string = "exported from model.py:12"
    return model


@pytest.fixture(scope="module")
def ort_output(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    """The CNN as ONNX Runtime's QDQ rewrite leaves it (compaction switched off), plus an orphan initializer."""
    patch = pytest.MonkeyPatch()
    patch.setattr("onnxq.rewrite.qdq.compact", lambda model: compact_module.CompactStats())
    try:
        result = onnxq.quantize(tiny_cnn(), cnn_data(32), latency=False)
    finally:
        patch.undo()
    model = _torch_like(result.model)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "leftover_float_w"))
    return model


def _session(model: onnx.ModelProto, folder: Path, tag: str) -> tuple[ort.InferenceSession, collections.Counter]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(folder / f"{tag}.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = onnx.load(options.optimized_model_filepath)
    return session, collections.Counter(node.op_type for node in fused.graph.node)


def test_outputs_bit_identical_fusion_unchanged_file_smaller(ort_output: onnx.ModelProto, tmp_path: Path) -> None:
    compacted = onnx.ModelProto()
    compacted.CopyFrom(ort_output)
    stats = compact(compacted)
    assert compacted.ByteSize() < ort_output.ByteSize()
    assert stats.bytes_saved == ort_output.ByteSize() - compacted.ByteSize()
    assert stats.zero_points >= 3 and stats.initializers >= 4 and stats.debug_nodes > 0
    onnx.checker.check_model(compacted)

    before, before_ops = _session(ort_output, tmp_path, "before")
    after, after_ops = _session(compacted, tmp_path, "after")
    assert after_ops == before_ops and after_ops["QLinearConv"] == 2 and after_ops["QGemm"] == 1
    feeds = cnn_data(16, seed=9)
    for x, y in zip(before.run(None, feeds), after.run(None, feeds)):
        assert x.dtype == y.dtype and np.array_equal(x, y)  # bit for bit


def test_what_goes_and_what_stays(ort_output: onnx.ModelProto) -> None:
    compacted = onnx.ModelProto()
    compacted.CopyFrom(ort_output)
    compact(compacted)
    inits = {t.name: t for t in compacted.graph.initializer}
    assert "leftover_float_w" not in inits
    dq_inputs = {n.output[0]: list(n.input) for n in compacted.graph.node if n.op_type == "DequantizeLinear"}
    readers = {i: n.op_type for n in compacted.graph.node for i in n.input}
    for out, inputs in dq_inputs.items():
        data = inits.get(inputs[0])
        if data is None:
            assert len(inputs) == 3  # activations keep their zero points
        elif data.data_type == onnx.TensorProto.INT32 or readers[out] == "Conv":
            assert len(inputs) == 2  # int32 biases and Conv weights: zero point gone
        else:
            assert len(inputs) == 3 and readers[out] == "Gemm"  # without it ORT would not fuse QGemm
    assert not any(name.endswith("zero_point") and not np.any(numpy_helper.to_array(t)) and t.dims
                   and t.data_type == onnx.TensorProto.INT32 for name, t in inits.items())
    by_name = {n.name: n for n in ort_output.graph.node}
    for node in compacted.graph.node:
        assert not node.doc_string
        trace = [(p.key, p.value) for p in by_name[node.name].metadata_props
                 if p.key in TRACE_KEYS or p.key.startswith("onnxq.")]
        assert [(p.key, p.value) for p in node.metadata_props] == trace  # the module path stays, the rest goes
    assert any(len(n.metadata_props) == 3 for n in compacted.graph.node)
    assert [(p.key, p.value) for p in compacted.metadata_props] == [(p.key, p.value) for p in ort_output.metadata_props]


def test_compact_is_idempotent_and_part_of_the_rewrite(ort_output: onnx.ModelProto) -> None:
    once = onnx.ModelProto()
    once.CopyFrom(ort_output)
    compact(once)
    twice = onnx.ModelProto()
    twice.CopyFrom(once)
    assert compact(twice) == compact_module.CompactStats()
    assert twice == once
    result = onnxq.quantize(tiny_cnn(), cnn_data(32), latency=False)  # compaction on
    stats = compact(result.model)
    assert (stats.zero_points, stats.initializers) == (0, 0)
