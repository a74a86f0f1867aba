"""Tests of onnxq.data: every data source, batching, fingerprints and every refusal."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import Dataset, InputSpec, input_specs, load_data
from onnxq.errors import ConfigError, DataError, ModelError

# --------------------------------------------------------------------------- models


def _model(inputs: list[onnx.ValueInfoProto], initializers: list[TensorProto] = ()
           ) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [vi.name], [f"{vi.name}_out"]) for vi in inputs]
    outputs = [helper.make_tensor_value_info(f"{vi.name}_out", vi.type.tensor_type.elem_type, None)
               for vi in inputs]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def image_model() -> onnx.ModelProto:
    """One float32 input x: [N, 1, 8, 8]."""
    return _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])])


@pytest.fixture
def text_model() -> onnx.ModelProto:
    """Two inputs: ids int64 [N, 'seq'] and mask float32 [N, 'seq']."""
    return _model([helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"]),
                   helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "seq"])])


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _text(n: int, seq: int = 5) -> dict[str, np.ndarray]:
    ids = np.arange(n * seq, dtype=np.int64).reshape(n, seq)
    return {"ids": ids, "mask": np.ones((n, seq), np.float32)}


def _collect(ds: Dataset, key: str = "x") -> np.ndarray:
    return np.concatenate([batch[key] for batch in ds])


def _save_tensor(path: Path, array: np.ndarray, name: str = "") -> None:
    path.write_bytes(numpy_helper.from_array(array, name).SerializeToString())


# --------------------------------------------------------------------------- input specs


def test_input_specs_skip_initializers_and_read_dims() -> None:
    weight = numpy_helper.from_array(np.zeros((3,), np.float32), "w")
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3]),
                    helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])], [weight])
    specs = input_specs(model)
    assert specs == [InputSpec("x", np.dtype(np.float32), (None, 3))]
    assert specs[0].describe() == "float32 with shape [N, 3]"


def test_input_specs_symbolic_and_unknown_shape(text_model: onnx.ModelProto) -> None:
    assert input_specs(text_model)[0] == InputSpec("ids", np.dtype(np.int64), ("N", "seq"))
    no_shape = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    assert input_specs(no_shape)[0].shape is None


def test_input_specs_refuse_non_tensor_input() -> None:
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    graph = helper.make_graph([], "g", [seq], [seq])
    with pytest.raises(ModelError, match="input 's'"):
        input_specs(helper.make_model(graph))


# --------------------------------------------------------------------------- sources


def test_dict_source(image_model: onnx.ModelProto) -> None:
    data = _images(20)
    ds = load_data({"x": data}, image_model, batch_size=8)
    assert (ds.num_samples, ds.num_batches, ds.has_labels) == (20, 3, False)
    assert ds.input_names == ["x"]
    sizes = [b["x"].shape[0] for b in ds]
    assert sizes == [8, 8, 4]
    np.testing.assert_array_equal(_collect(ds), data)
    assert [b["x"].shape[0] for b in ds] == sizes  # re-iterable


def test_dict_of_lists_is_cast(text_model: onnx.ModelProto) -> None:
    ds = load_data({"ids": [[1, 2, 3], [4, 5, 6]], "mask": [[1.0, 1.0, 0.0]] * 2}, text_model)
    (batch,) = list(ds)
    assert batch["ids"].dtype == np.int64 and batch["mask"].dtype == np.float32
    assert batch["mask"].flags.c_contiguous


def test_single_array_source(image_model: onnx.ModelProto) -> None:
    ds = load_data(_images(5), image_model, batch_size=2)
    assert [b["x"].shape[0] for b in ds] == [2, 2, 1]


def test_single_array_needs_one_input(text_model: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="one-input model.*'ids', 'mask'"):
        load_data(np.zeros((2, 3), np.int64), text_model)


def test_list_of_samples_and_batches(image_model: onnx.ModelProto) -> None:
    data = _images(7)
    items = [{"x": data[i]} for i in range(3)] + [{"x": data[3:7]}]  # 3 samples + 1 batch of 4
    ds = load_data(items, image_model, batch_size=3)
    assert ds.num_samples == 7 and ds.num_batches == 3
    np.testing.assert_array_equal(_collect(ds), data)


def test_tuple_of_dicts_with_labels(text_model: onnx.ModelProto) -> None:
    items = tuple({**_text(2), "labels": np.array([i, i])} for i in range(3))
    ds = load_data(items, text_model, batch_size=4)
    assert ds.has_labels
    labels = np.concatenate([lab for _, lab in ds.batches()])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])


def test_generator_is_streamed_and_checked_lazily(text_model: onnx.ModelProto) -> None:
    produced: list[int] = []

    def gen():
        for i in range(5):
            produced.append(i)
            yield _text(3)

    ds = load_data(gen(), text_model, batch_size=4)
    assert produced == [0]  # only the first item was peeked
    assert ds.num_samples is None and ds.num_batches is None
    assert ds.fingerprint() is None
    sizes = [b["ids"].shape[0] for b in ds]
    assert sizes == [4, 4, 4, 3]
    with pytest.raises(DataError, match="already iterated"):
        list(ds)


def test_generator_limit_stops_early(image_model: onnx.ModelProto) -> None:
    produced: list[int] = []

    def gen():
        for i in range(100):
            produced.append(i)
            yield {"x": _images(4, seed=i)}

    ds = load_data(gen(), image_model, batch_size=3, limit=7)
    assert [b["x"].shape[0] for b in ds] == [3, 3, 1]
    assert len(produced) == 2


def test_reiterable_stream(image_model: onnx.ModelProto) -> None:
    class Source:
        def __iter__(self):
            for i in range(3):
                yield {"x": _images(2, seed=i)}

    ds = load_data(Source(), image_model, batch_size=4)
    first, second = _collect(ds), _collect(ds)
    np.testing.assert_array_equal(first, second)
    assert ds.fingerprint() == load_data(Source(), image_model, batch_size=1).fingerprint()


def test_npz_file_with_labels(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    data, labels = _images(10), np.arange(10)
    path = tmp_path / "calib.npz"
    np.savez_compressed(path, x=data, labels=labels)
    ds = load_data(path, image_model, batch_size=4)
    assert ds.has_labels and ds.num_samples == 10
    got = list(ds.batches())
    np.testing.assert_array_equal(np.concatenate([b["x"] for b, _ in got]), data)
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in got]), labels)


def test_npz_labels_key_is_configurable(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, x=_images(3), target=np.arange(3))
    assert load_data(path, image_model, labels_key="target").has_labels
    with pytest.raises(DataError, match="unknown input 'target'"):
        load_data(path, image_model)


def test_single_npy_file_is_memory_mapped(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    path = tmp_path / "x.npy"
    np.save(path, _images(6))
    ds = load_data(path, image_model, batch_size=4)
    batch = next(iter(ds))
    assert type(batch["x"]) is np.ndarray and batch["x"].flags.writeable
    np.testing.assert_array_equal(_collect(ds), _images(6))


def test_npy_folder(tmp_path: Path, text_model: onnx.ModelProto) -> None:
    data = _text(9)
    for name, array in data.items():
        np.save(tmp_path / f"{name}.npy", array)
    np.save(tmp_path / "labels.npy", np.arange(9))
    (tmp_path / ".DS_Store").write_text("ignored")
    ds = load_data(tmp_path, text_model, batch_size=4)
    assert ds.num_samples == 9 and ds.has_labels
    np.testing.assert_array_equal(_collect(ds, "ids"), data["ids"])


def test_npz_folder_natural_order(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    data = _images(12)
    for i in range(12):
        np.savez(tmp_path / f"sample_{i}.npz", x=data[i])  # one sample, no batch axis
    ds = load_data(tmp_path, image_model, batch_size=5)
    assert ds.num_samples == 12 and ds.num_batches == 3
    np.testing.assert_array_equal(_collect(ds), data)  # sample_2 before sample_10


def test_onnx_test_data_folder(tmp_path: Path, text_model: onnx.ModelProto) -> None:
    sets = [_text(2, seq=4), _text(3, seq=4)]
    for i, data in enumerate(sets):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        _save_tensor(folder / "input_0.pb", data["ids"])  # no name: position 0 -> ids
        _save_tensor(folder / "input_1.pb", data["mask"], name="mask")
        _save_tensor(folder / "output_0.pb", data["mask"], name="out")
    ds = load_data(tmp_path, text_model, batch_size=8)
    assert ds.num_samples == 5 and not ds.has_labels
    np.testing.assert_array_equal(_collect(ds, "ids"), np.concatenate([d["ids"] for d in sets]))
    single = load_data(tmp_path / "test_data_set_1", text_model)
    np.testing.assert_array_equal(_collect(single, "ids"), sets[1]["ids"])


def test_test_data_names_by_tensor_name(tmp_path: Path, text_model: onnx.ModelProto) -> None:
    data = _text(2)
    _save_tensor(tmp_path / "input_0.pb", data["mask"], name="mask")  # names win over order
    _save_tensor(tmp_path / "input_1.pb", data["ids"], name="ids")
    np.testing.assert_array_equal(_collect(load_data(tmp_path, text_model), "ids"), data["ids"])


def test_dataset_source_is_rebatched_and_limited(image_model: onnx.ModelProto) -> None:
    ds = load_data({"x": _images(10)}, image_model, batch_size=4)
    same = load_data(ds, image_model)
    assert same.batch_size == 4 and same.num_batches == 3
    smaller = load_data(ds, image_model, batch_size=3, limit=5)
    assert [b["x"].shape[0] for b in smaller] == [3, 2]
    np.testing.assert_array_equal(_collect(smaller), _images(10)[:5])


# --------------------------------------------------------------------------- batching


def test_limit_shuffle_are_deterministic(image_model: onnx.ModelProto) -> None:
    data = _images(50)
    a = load_data({"x": data}, image_model, batch_size=7, shuffle=True, seed=3, limit=20)
    b = load_data({"x": data}, image_model, batch_size=7, shuffle=True, seed=3, limit=20)
    c = load_data({"x": data}, image_model, batch_size=7, shuffle=True, seed=4, limit=20)
    assert a.num_samples == 20 and a.num_batches == 3
    order = np.random.default_rng(3).permutation(50)[:20]
    np.testing.assert_array_equal(_collect(a), data[order])
    np.testing.assert_array_equal(_collect(a), _collect(b))
    assert not np.array_equal(_collect(a), _collect(c))


def test_shuffle_across_files(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    data = _images(9)
    for i in range(3):
        np.savez(tmp_path / f"part{i}.npz", x=data[3 * i:3 * i + 3])
    ds = load_data(tmp_path, image_model, batch_size=4, shuffle=True, seed=1)
    np.testing.assert_array_equal(_collect(ds), data[np.random.default_rng(1).permutation(9)])


def test_fixed_batch_dim_forces_batch_size_one(caplog: pytest.LogCaptureFixture) -> None:
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])])
    with caplog.at_level(logging.INFO, logger="onnxq.data"):
        ds = load_data({"x": np.zeros((5, 3), np.float32)}, model, batch_size=8)
    assert ds.batch_size == 1 and ds.num_batches == 5
    assert all(b["x"].shape == (1, 3) for b in ds)
    assert "batch" in caplog.text


def test_batches_do_not_alias_the_source(image_model: onnx.ModelProto) -> None:
    data = _images(4)
    batch = next(iter(load_data({"x": data}, image_model, batch_size=4)))
    batch["x"][:] = 0
    assert data.any()


def test_shuffle_refused_for_generators(image_model: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="shuffle"):
        load_data(iter([{"x": _images(2)}]), image_model, shuffle=True)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"limit": 0}, {"batch_size": 2.5}])
def test_bad_arguments(image_model: onnx.ModelProto, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        load_data({"x": _images(2)}, image_model, **kwargs)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    data = _images(10)
    path = tmp_path / "d.npz"
    np.savez(path, x=data)
    first = load_data(path, image_model).fingerprint()
    assert first == load_data(path, image_model).fingerprint()
    assert len(first) == 64
    # independent of batching and of the container; float64 data is what the model sees as float32
    assert first == load_data({"x": data}, image_model, batch_size=3).fingerprint()
    assert first == load_data({"x": data.astype(np.float64)}, image_model).fingerprint()
    changed = data.copy()
    changed[4, 0, 0, 0] += 1
    assert first != load_data({"x": changed}, image_model).fingerprint()
    assert first != load_data(path, image_model, limit=9).fingerprint()
    assert first != load_data(path, image_model, shuffle=True).fingerprint()
    labelled = load_data({"x": data, "labels": np.zeros(10)}, image_model).fingerprint()
    assert first != labelled


# --------------------------------------------------------------------------- casting


def test_lossless_casts_are_applied(text_model: onnx.ModelProto) -> None:
    ds = load_data({"ids": np.ones((2, 3), np.int32), "mask": np.ones((2, 3), np.float64)},
                   text_model)
    batch = next(iter(ds))
    assert batch["ids"].dtype == np.int64 and batch["mask"].dtype == np.float32


def test_int_narrowing_accepted_when_values_fit() -> None:
    model = _model([helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 4])])
    batch = next(iter(load_data({"ids": np.ones((2, 4), np.int64)}, model)))
    assert batch["ids"].dtype == np.int32
    too_big = np.ones((3, 4), np.int64)
    too_big[2, 1] = 2**40
    with pytest.raises(DataError, match=r"input 'ids': sample 2 contains a value outside"):
        load_data({"ids": too_big}, model)


# --------------------------------------------------------------------------- refusals


def test_error_wrong_rank_message(image_model: onnx.ModelProto) -> None:
    with pytest.raises(DataError) as info:
        load_data({"x": np.zeros((4, 8, 8))}, image_model)
    assert str(info.value).startswith(
        "input 'x': expected float32 with shape [N, 1, 8, 8], got float64 with shape [4, 8, 8]")


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"x": np.zeros((4, 1, 8, 8), np.int64)},
         r"input 'x': expected float32 .* got int64 .*integer data is not cast to float"),
        ({"x": np.zeros((4, 1, 8, 9), np.float32)},
         r"input 'x': expected float32 with shape \[N, 1, 8, 8\], got float32 with shape "
         r"\[4, 1, 8, 9\] \(dimension 3 must be 8, got 9\)"),
        ({"x": np.zeros((4, 1, 8, 8), np.complex64)}, r"input 'x': .*no lossless cast"),
        ({"x": _images(2), "y": _images(2)}, r"unknown input 'y'; model inputs: 'x'"),
        ({"labels": np.zeros(2)}, r"missing input 'x'; model inputs: 'x'"),
        ({"x": np.zeros((0, 1, 8, 8), np.float32)}, r"no samples"),
        ({"x": _images(3), "labels": np.zeros(2)},
         r"labels 'labels': expected one label per sample \(3\)"),
        ({"x": [[1.0, 2.0], [3.0]]}, r"input 'x': cannot be made into an array"),
    ],
)
def test_bad_image_data(image_model: onnx.ModelProto, data: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_data(data, image_model)


def test_float_to_int_refused(text_model: onnx.ModelProto) -> None:
    data = _text(2)
    data["ids"] = data["ids"].astype(np.float32)
    with pytest.raises(DataError, match=r"input 'ids': expected int64 .*float data is not cast"):
        load_data(data, text_model)


def test_inconsistent_sample_counts(text_model: onnx.ModelProto) -> None:
    data = {"ids": np.zeros((3, 5), np.int64), "mask": np.ones((2, 5), np.float32)}
    with pytest.raises(DataError, match=r"different sample counts: 'ids' has 3, 'mask' has 2"):
        load_data(data, text_model)


def test_shared_symbolic_dim_must_agree(text_model: onnx.ModelProto) -> None:
    data = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 6), np.float32)}
    with pytest.raises(DataError, match=r"input 'mask': dimension 'seq' is 6, but 5 in input 'ids'"):
        load_data(data, text_model)


def test_variable_shapes_need_batch_size_one(text_model: onnx.ModelProto) -> None:
    items = [_text(1, seq=4), _text(1, seq=6)]
    with pytest.raises(DataError, match=r"input 'ids': samples have different shapes.*item 1"):
        load_data(items, text_model, batch_size=2)
    assert load_data(items, text_model, batch_size=1).num_batches == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_named_with_sample(image_model: onnx.ModelProto, bad: float) -> None:
    data = _images(6)
    data[4, 0, 3, 3] = bad
    name = "NaN" if np.isnan(bad) else "Inf"
    with pytest.raises(DataError, match=rf"input 'x': sample 4 contains {name}"):
        load_data({"x": data}, image_model)
    # not selected by limit: accepted
    assert load_data({"x": data}, image_model, limit=4).num_samples == 4


def test_float64_overflow_refused(image_model: onnx.ModelProto) -> None:
    data = np.zeros((2, 1, 8, 8))
    data[1, 0, 0, 0] = 1e300
    with pytest.raises(DataError, match=r"input 'x': sample 1 contains a value outside the float32"):
        load_data({"x": data}, image_model)


def test_nan_in_file_names_file_and_sample(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    data = _images(5)
    data[2, 0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(DataError, match=r"input 'x' in folder '.*': sample 2 contains NaN"):
        load_data(tmp_path, image_model)


def test_bad_item_in_list_names_item(image_model: onnx.ModelProto) -> None:
    items = [{"x": _images(1)[0]}, {"x": np.zeros((8, 8), np.float32)}]
    with pytest.raises(DataError, match=r"input 'x' in item 1: expected float32"):
        load_data(items, image_model)
    with pytest.raises(DataError, match=r"item 0 of the data list is a str"):
        load_data(["nope"], image_model)


def test_generator_first_item_checked_at_load(image_model: onnx.ModelProto) -> None:
    def gen():
        yield {"x": np.zeros((2, 1, 8, 8), np.int64)}

    with pytest.raises(DataError, match=r"input 'x' in item 0: expected float32"):
        load_data(gen(), image_model)


def test_generator_later_item_checked_on_arrival(image_model: onnx.ModelProto) -> None:
    def gen():
        yield {"x": _images(2)}
        bad = _images(2)
        bad[1, 0, 0, 0] = np.inf
        yield {"x": bad}

    ds = load_data(gen(), image_model, batch_size=2)
    batches = iter(ds)
    next(batches)
    with pytest.raises(DataError, match=r"input 'x' in item 1: sample 3 contains Inf"):
        next(batches)


def test_generator_labels_must_be_consistent(image_model: onnx.ModelProto) -> None:
    items = iter([{"x": _images(1), "labels": [1]}, {"x": _images(1)}])
    with pytest.raises(DataError, match=r"labels 'labels' in item 1"):
        list(load_data(items, image_model))


def test_empty_sources(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="no samples"):
        load_data([], image_model)
    with pytest.raises(DataError, match="no samples"):
        load_data(iter([]), image_model)
    with pytest.raises(DataError, match="holds no data"):
        load_data(tmp_path, image_model)


def test_missing_and_corrupt_files(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match=r"data path '.*nowhere.npz' does not exist"):
        load_data(tmp_path / "nowhere.npz", image_model)
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"cannot read '.*bad.npz'"):
        load_data(corrupt, image_model)
    bad_npy = tmp_path / "x.npy"
    bad_npy.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read '.*x.npy'"):
        load_data(bad_npy, image_model)
    other = tmp_path / "data.csv"
    other.write_text("1,2")
    with pytest.raises(DataError, match="unsupported data file"):
        load_data(other, image_model)


def test_corrupt_test_data_file(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(DataError, match=r"cannot read '.*input_0.pb'"):
        load_data(tmp_path, image_model)


def test_unknown_npy_file_in_folder(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    np.save(tmp_path / "x.npy", _images(2))
    np.save(tmp_path / "image.npy", _images(2))
    with pytest.raises(DataError, match=r"unknown input 'image' in folder .*model inputs: 'x'"):
        load_data(tmp_path, image_model)


def test_mixed_folder_refused(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    np.save(tmp_path / "x.npy", _images(2))
    np.savez(tmp_path / "more.npz", x=_images(2))
    with pytest.raises(DataError, match="mixes .npy and .npz"):
        load_data(tmp_path, image_model)


def test_messages_are_one_line(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError) as info:
        load_data(corrupt, image_model)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- edge rules


def test_model_without_declared_shape_accepts_any_rank() -> None:
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    ds = load_data({"x": np.zeros((3, 2, 2, 2), np.float32)}, model, batch_size=2)
    assert [b["x"].shape for b in ds] == [(2, 2, 2, 2), (1, 2, 2, 2)]


def test_input_named_like_labels_key_is_an_input() -> None:
    model = _model([helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])])
    ds = load_data({"labels": np.arange(4)}, model)
    assert not ds.has_labels and ds.input_names == ["labels"]


def test_fixed_batch_dim_above_one_drops_remainder() -> None:
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])])
    ds = load_data({"x": np.zeros((10, 2), np.float32)}, model, batch_size=3)
    assert (ds.batch_size, ds.num_batches, ds.num_samples) == (4, 2, 8)
    assert [b["x"].shape[0] for b in ds] == [4, 4]
    with pytest.raises(DataError, match="exactly 4 samples"):
        load_data({"x": np.zeros((3, 2), np.float32)}, model)


def test_dataset_checked_again_for_another_model(image_model: onnx.ModelProto) -> None:
    ds = load_data({"x": np.zeros((2, 1, 8, 8), np.float32)}, image_model)
    other = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])])
    with pytest.raises(DataError, match=r"input 'x': expected float32 with shape \[N, 3, 8, 8\]"):
        load_data(ds, other)
    assert load_data(ds, input_specs(image_model), limit=1).num_samples == 1


def test_cast_is_logged(image_model: onnx.ModelProto, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="onnxq.data"):
        load_data({"x": np.zeros((2, 1, 8, 8))}, image_model)
    assert "casting float64 data to float32" in caplog.text


def test_npz_files_with_different_shapes(tmp_path: Path, text_model: onnx.ModelProto) -> None:
    np.savez(tmp_path / "a.npz", **_text(2, seq=3))
    np.savez(tmp_path / "b.npz", **_text(2, seq=4))
    with pytest.raises(DataError, match=r"input 'ids': samples have different shapes.*b\.npz"):
        load_data(tmp_path, text_model, batch_size=2)
    ds = load_data(tmp_path, text_model, batch_size=1)
    assert [b["ids"].shape for b in ds] == [(1, 3)] * 2 + [(1, 4)] * 2


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_stored_and_compressed_give_the_same_batches(tmp_path: Path, image_model: onnx.ModelProto,
                                                         save) -> None:
    """Uncompressed .npz members are read row by row from disk (not loaded whole, not mmapped):
    shuffled and limited batches must still match the data exactly."""
    images, labels = _images(11), np.arange(11)
    path = tmp_path / "d.npz"
    save(path, x=images, labels=labels)
    ds = load_data(path, image_model, batch_size=4, shuffle=True, seed=3, limit=9)
    order = np.random.default_rng(3).permutation(11)[:9]
    got = [(b, lab) for b, lab in ds.batches()]
    assert np.array_equal(np.concatenate([b["x"] for b, _ in got]), images[order])
    assert np.array_equal(np.concatenate([lab for _, lab in got]), labels[order])


def test_truncated_stored_npz_is_a_data_error(tmp_path: Path, image_model: onnx.ModelProto) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=_images(8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="d.npz"):
        list(load_data(path, image_model, batch_size=4))


def test_onnxq_feeds_is_a_compatibility_shim() -> None:
    """``onnxq.feeds`` keeps exporting the public names of ``onnxq.data``, as the same objects."""
    import onnxq.data
    import onnxq.feeds

    assert onnxq.feeds.__all__ == onnxq.data.__all__
    for name in onnxq.data.__all__:
        assert getattr(onnxq.feeds, name) is getattr(onnxq.data, name), name
