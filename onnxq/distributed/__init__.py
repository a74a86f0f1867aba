"""Scale-out on Dask distributed: sharded calibration, validation and analysis, batch quantization of many models.

Dask is an optional extra (``pip install 'onnxq[dask]'``). Nothing in this package is imported
by ``import onnxq`` or by a run without ``client=`` / ``--dask``; its modules import Dask only
inside the functions that need it. Import the modules directly:

* :mod:`onnxq.distributed.cluster` -- connect to a scheduler or start a ``LocalCluster``.
* :mod:`onnxq.distributed.calibrate` -- sharded calibration, merged observer states.
* :mod:`onnxq.distributed.validate` -- sharded validation, merged metric accumulators (also ``compare``).
* :mod:`onnxq.distributed.pairs` -- the worker loop of a float/quantized pair over shards (validation,
  and the per-layer analysis of ``onnxq.analyze(..., client=)``).
* :mod:`onnxq.distributed.batch` -- ``onnxq batch``: many models as independent tasks.
"""
