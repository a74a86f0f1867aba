"""The streaming engine: in-graph MinMax reductions (issue 13 item 2), fixed batch sizes, shard merging."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import CNN_INPUT, make_cnn_model, make_images

from onnxq import QuantConfig
from onnxq.calibration.observers import HistogramObserver, MinMaxObserver, compute_range
from onnxq.calibration.runner import collect_ranges
from onnxq.engine import Runner, TappedModel, merge_observers, observe, stream
from onnxq.feeds import load_data

TENSORS = [CNN_INPUT, "conv_out", "relu_out", "pool_out", "flat", "logits"]


def _batches(count: int = 4, size: int = 8) -> list[dict[str, np.ndarray]]:
    return [{CNN_INPUT: make_images(size, seed=10 + i)} for i in range(count)]


@pytest.mark.parametrize("moving_average", [False, True])
def test_in_graph_minmax_equals_full_taps(moving_average: bool) -> None:
    model = make_cnn_model()
    data = _batches()

    def factory() -> MinMaxObserver:
        return MinMaxObserver(moving_average, 0.3)

    reduced, n_reduced = observe(model, data, TENSORS, factory, reduce=True)
    full, n_full = observe(model, data, TENSORS, factory, reduce=False)
    assert n_reduced == n_full == 32
    for name in TENSORS:
        assert reduced[name].to_dict() == full[name].to_dict(), name


def test_in_graph_reduction_leaves_only_scalars() -> None:
    tapped = TappedModel(make_cnn_model(), TENSORS, reduce=True)
    assert set(tapped.reduced) == set(TENSORS)
    outputs = dict(zip(tapped.runner.outputs, tapped.runner.run(_batches(1)[0])))
    assert all(np.ndim(v) == 0 for v in outputs.values())


def test_non_finite_values_are_skipped_as_with_full_taps() -> None:
    model = make_cnn_model()
    data = _batches()
    data[1][CNN_INPUT][0, 0, 0, 0] = np.nan
    data[2][CNN_INPUT][3, 0, 1, 1] = np.inf
    reduced, _ = observe(model, data, TENSORS, MinMaxObserver, reduce=True)
    full, _ = observe(model, data, TENSORS, MinMaxObserver, reduce=False)
    for name in TENSORS:
        assert reduced[name].to_dict() == full[name].to_dict(), name
    assert reduced[CNN_INPUT].nonfinite == 2


def test_in_graph_extremes_equal_full_taps_for_the_histogram_replay() -> None:
    """Pass 1 of sharded histogram calibration records each batch's extremes in the graph: the same
    records (low, high, count, non-finite, dtype) as full taps, non-finite values included."""
    from onnxq.distributed._replay import Extremes

    model = make_cnn_model()
    data = _batches()
    data[1][CNN_INPUT][0, 0, 0, 0] = np.nan
    data[3][CNN_INPUT][2, 0, 1, 1] = -np.inf
    reduced, _ = observe(model, data, TENSORS, Extremes, reduce=True)
    full, _ = observe(model, data, TENSORS, Extremes, reduce=False)
    for name in TENSORS:
        assert reduced[name].batches == full[name].batches, name
        assert reduced[name].count == full[name].count
    assert [b[3] for b in reduced[CNN_INPUT].batches] == [0, 1, 0, 1]
    assert {b[4] for b in reduced["logits"].batches} == {"<f4"}


def test_minmax_calibration_ranges_unchanged() -> None:
    """collect_ranges (in-graph reductions) gives the ranges of full taps + numpy, bit for bit."""
    model = make_cnn_model()
    data = load_data({CNN_INPUT: make_images(40)}, model, batch_size=8)
    ranges = collect_ranges(model, data, TENSORS, QuantConfig())
    full, _ = observe(model, data, TENSORS, MinMaxObserver, reduce=False)
    for name in TENSORS:
        assert (ranges[name].low, ranges[name].high) == compute_range(full[name], QuantConfig()), name


def test_shards_merge_to_the_whole() -> None:
    model = make_cnn_model()
    data = _batches(4)
    whole, _ = observe(model, data, TENSORS, lambda: HistogramObserver(64))
    tapped = TappedModel(model, TENSORS)
    shards = [tapped.observe(data[:2], lambda: HistogramObserver(64))[0],
              tapped.observe(data[2:], lambda: HistogramObserver(64))[0]]
    merged = merge_observers(shards)
    for name in TENSORS:
        assert merged[name].count == whole[name].count
        assert merged[name].min == whole[name].min and merged[name].max == whole[name].max


def _fixed_batch_model(batch: int) -> onnx.ModelProto:
    model = make_cnn_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    return model


@pytest.mark.parametrize("batch_size", [3, 4, 8, 10])
def test_fixed_batch_pads_the_remainder_and_cuts_it_away(batch_size: int) -> None:
    """A model fixed to batch 4 sees batches of exactly 4; every one of 10 samples counts once."""
    images = make_images(10)
    reference = Runner.create(make_cnn_model())
    expected = reference.run({CNN_INPUT: images})[0]
    runner = Runner.create(_fixed_batch_model(4))
    got: list[np.ndarray] = []
    data = [{CNN_INPUT: images[i:i + batch_size]} for i in range(0, 10, batch_size)]
    stats = stream([runner], data, lambda b: got.append(b.outputs[0]["logits"]))
    assert stats.samples == 10 and stats.padded == 2
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5, atol=1e-6)


def test_static_transformer_streams_the_calibration_data_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """SmoothQuant's statistics and MinMax calibration share one pass; ranges within float32 rounding
    of smoothing first and calibrating the smoothed model in a second pass."""
    from builders import encoder_data, tiny_encoder

    from onnxq import pipelines, rewrite
    from onnxq.feeds import Dataset
    from onnxq.plan import make_plan
    from onnxq.prepare import prepare
    from onnxq.smooth import smooth

    config = QuantConfig()
    model = prepare(tiny_encoder(), config)
    plan = make_plan(model, config, supported_op_types=rewrite.static_op_types())
    data = load_data(encoder_data(40), model, batch_size=8)
    passes: list[int] = []
    real = type(data).batches

    def counted(self: Dataset):  # type: ignore[no-untyped-def]
        passes.append(id(self))
        return real(self)

    monkeypatch.setattr(type(data), "batches", counted)
    smoothed, new_plan, ranges = pipelines._smooth(model, plan, pipelines.Job(model, config, data))
    assert passes == [id(data)] and ranges is not None
    two_model, two_plan = smooth(model, plan, data, alpha=config.smooth_alpha)
    two = collect_ranges(two_model, data, two_plan.tensors_to_calibrate, config)
    assert smoothed.SerializeToString() == two_model.SerializeToString() and new_plan == two_plan
    assert list(ranges.tensors) == list(two.tensors) and ranges.samples == two.samples == 40
    for name, r in two.tensors.items():
        assert ranges[name].low == pytest.approx(r.low, rel=1e-6)
        assert ranges[name].high == pytest.approx(r.high, rel=1e-6)


def test_replay_runner_runs_each_batch_once_and_validation_is_unchanged(tmp_path) -> None:
    """The fallback validates many candidates on the same data: the float model runs once per batch."""
    from onnxq import quantize
    from onnxq.engine import ReplayRunner
    from onnxq.validate import validate

    model = make_cnn_model()
    images = make_images(20)
    quantized = quantize(model, {CNN_INPUT: images}, config=QuantConfig(), latency=False).model
    data = load_data({CNN_INPUT: images}, model, batch_size=8)
    calls: list[int] = []
    replay = ReplayRunner.create(model)
    original = Runner.run

    def counting(self, feeds):
        calls.append(len(next(iter(feeds.values()))))
        return original(self, feeds)

    Runner.run = counting  # ReplayRunner.run calls Runner.run on a miss
    try:
        first = validate(model, quantized, data, latency=False, float_runner=replay)
        misses = len(calls)
        second = validate(model, quantized, data, latency=False, float_runner=replay)
    finally:
        Runner.run = original
    assert len(replay.seen) == 3  # batches of 8, 8, 4
    # first pass: 3 float + 3 quantized runs; second pass: only the 3 quantized ones
    assert misses == 6 and len(calls) == 9
    plain = validate(model, quantized, data, latency=False)
    for report in (first, second):
        assert report.outputs[0].cosine == plain.outputs[0].cosine
        assert report.outputs[0].max_abs_error == plain.outputs[0].max_abs_error
    other = {CNN_INPUT: make_images(4, seed=9)}
    replay.run(other)
    assert len(replay.seen) == 4  # different inputs are not replayed
