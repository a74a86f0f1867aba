"""Calibration and evaluation data: every source becomes a ``Dataset`` checked against the model.

``load_data`` turns a data source into a :class:`Dataset` of batches ``{input_name: array}``
(first axis = samples) and checks it against the model's inputs before any work starts, so a
bad file fails in one line instead of halfway through a calibration run.

Sources:
    * a :class:`Dataset` (re-batched, limited or shuffled when asked);
    * a dict ``{input_name: array}``, first axis = samples (numpy arrays or nested lists);
    * a list or tuple of such dicts; each dict is one sample or a batch: an array whose rank
      equals the model input's rank is a batch, one rank less is one sample (a batch axis is added);
    * a generator or other iterable of such dicts, streamed: never held whole in memory, each
      item checked as it arrives, the first one before ``load_data`` returns;
    * a single numpy array when the model has exactly one input;
    * a path to a ``.npz`` file (keys = input names, first axis = samples) or a ``.npy`` file
      (one-input models);
    * a path to a folder (see the folder rules below).

In every dict-like source the key ``labels_key`` (default ``"labels"``) holds labels, one per
sample, unless the model has an input of that name; ``label`` is read as ``labels`` (and the other
way round). A one-input model takes a source holding one array (besides labels) under any name:
``arr_0`` of ``np.savez(path, x)``, ``{"image": x}`` for an input called ``input_layer``.

Folder rules (files starting with ``.`` are ignored; "sorted" means by file name with digit
runs compared as numbers, so ``s2`` comes before ``s10``):
    1. A folder with ``test_data_set_*`` sub-folders is an ONNX test-data folder: each set is
       read in sorted order, each holding ``input_0.pb, input_1.pb, ...`` TensorProto files. A
       tensor's ``name`` maps it to the model input; an empty name maps ``input_<i>.pb`` to the
       i-th model input. A folder holding ``input_*.pb`` files itself is read as one such set.
       ``output_*.pb`` files are ignored (they are expected outputs, not labels).
    2. Otherwise a folder of ``.npy`` files holds one file per input, ``<input_name>.npy``, first
       axis = samples, plus an optional ``<labels_key>.npy``. Files are memory-mapped.
    3. Otherwise a folder of ``.npz`` files holds one or more samples per file (keys = input
       names, optional labels key); the files are read in sorted order, one at a time.
    A folder mixing ``.npy`` and ``.npz`` files is refused as ambiguous.

Casting rules (data is cast to the model's dtype; everything else is refused):
    * float64 -> float32 (numpy's default float), and any lossless float widening
      (float16 -> float32 ...); a value outside the float32 range is an error;
    * integer or bool -> any integer type (int32 -> int64, uint8 -> int64 ...); a narrowing
      cast (int64 -> int32) is accepted when every value fits, checked value by value;
    * float -> integer, integer -> float, float narrowing other than float64 -> float32, and
      anything -> bool are refused: convert (and scale) such data yourself.

Other checks: unknown and missing inputs, rank, fixed dimensions (dynamic ones accept any size;
inputs sharing a symbolic dimension must agree on it), sample counts between the inputs and the
labels of one source, empty data, unreadable or corrupt files, NaN / Inf in float inputs. A
model whose batch dimension is fixed to 1 gets batches of 1; one fixed to ``k > 1`` gets batches
of exactly ``k`` (a smaller remainder is dropped).

Modules (one job each; everything but the names below is private):
    ``specs`` the model inputs (``InputSpec``, ``input_specs``); ``checks`` names, dtypes,
    shapes, counts and values against them; ``text`` the wording of their messages; ``blocks``
    in-memory sources and key aliases; ``readers_numpy`` ``.npz`` / ``.npy`` files;
    ``readers_folder`` paths, folders and ONNX test-data sets; ``table`` random access over
    blocks; ``dataset`` ``Dataset`` and its random-access kind; ``stream`` streamed iterables;
    ``load`` the entry points ``load_data`` and ``check_data``.
"""

from .dataset import DEFAULT_BATCH_SIZE, Dataset
from .load import check_data, load_data
from .specs import InputSpec, input_specs

__all__ = ["DEFAULT_BATCH_SIZE", "Dataset", "InputSpec", "check_data", "input_specs", "load_data"]
