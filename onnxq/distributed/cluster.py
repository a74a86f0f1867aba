"""Dask clusters for onnxq: connect to a scheduler, or start a LocalCluster and close it at the end.

``spec`` strings (the CLI's ``--dask``): ``tcp://host:port`` (or any address a Dask ``Client``
accepts) connects to a running scheduler; ``local:N`` starts a ``LocalCluster`` of N
single-threaded worker processes on loopback for the run. A worker's ONNX Runtime sessions run as
many intra-op threads as the worker has task threads: 1 per worker on ``local:N`` (N workers, N
cores); on a running cluster, what ``dask worker --nthreads`` gave each worker. Dask is imported here only inside the
functions, so importing this module costs nothing when Dask is absent.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "MMAP_HINT", "Cluster", "connect", "open_cluster", "parse_spec", "require_dask"]

#: What to run when Dask is missing (the optional extra).
INSTALL_HINT = "pip install 'onnxq[dask]'"

_LOCAL = re.compile(r"local:(\d+)")

#: Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``; glibc then stops raising its
#: mmap threshold, so every array over 128 KiB is a fresh mmap (page faults on each batch's
#: activations): onnxq's histogram pass ran 1.7x slower than the same code in-process. A fixed 32 MiB
#: mmap threshold keeps Dask's trimming without the cost: ``local:N`` workers get it, and
#: :data:`MMAP_HINT` tells how to give it to workers you start.
_MMAP_KEY, _MMAP_BYTES = "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_", 32 * 2**20
MMAP_HINT = f"MALLOC_MMAP_THRESHOLD_={_MMAP_BYTES}"


def require_dask() -> Any:
    """The ``distributed`` module, or a one-line ``ConfigError`` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"running on Dask needs the optional extra: {INSTALL_HINT}") from None
    return distributed


def parse_spec(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("address", spec)`` for a scheduler address.

    Raises:
        ConfigError: an empty spec, ``local:0`` or a spec that is neither form.
    """
    text = spec.strip()
    match = _LOCAL.fullmatch(text)
    if match:
        workers = int(match.group(1))
        if not 1 <= workers <= 1024:
            raise ConfigError(f"--dask local:N needs 1 <= N <= 1024, got {spec!r}")
        return "local", workers
    if "://" in text or re.fullmatch(r"[\w.-]+:\d+", text):
        return "address", text
    raise ConfigError(f"--dask expects tcp://HOST:PORT (a running scheduler) or local:N, got {spec!r}")


@dataclass
class Cluster:
    """A connected ``distributed.Client``; ``local`` is the ``LocalCluster`` onnxq started, if any."""

    client: Any
    local: Any = None

    @property
    def workers(self) -> int:
        """Workers currently connected to the scheduler."""
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def close(self) -> None:
        """Close the client, and the LocalCluster when onnxq started it (a remote one is left running)."""
        self.client.close()
        if self.local is not None:
            self.local.close()


def connect(spec: str, *, timeout: float = 30.0) -> Cluster:
    """Connect to ``spec`` (see the module docstring); a LocalCluster is started for ``local:N``.

    Raises:
        ConfigError: Dask is not installed, the spec is malformed, or the scheduler is unreachable.
    """
    kind, value = parse_spec(spec)
    distributed = require_dask()
    if kind == "local":
        import dask

        with dask.config.set({_MMAP_KEY: _MMAP_BYTES}):  # see MMAP_HINT
            local = distributed.LocalCluster(n_workers=int(value), threads_per_worker=1, processes=True,
                                             host="127.0.0.1", dashboard_address=None,
                                             silence_logs=logging.ERROR)
        cluster = Cluster(distributed.Client(local, set_as_default=False), local)
    else:
        try:
            cluster = Cluster(distributed.Client(str(value), timeout=timeout, set_as_default=False))
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {value}: {exc}") from None
        try:
            cluster.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            cluster.close()
            raise ConfigError(f"the Dask scheduler at {value} has no worker after {timeout:g} s; start some with "
                              f"`dask worker {value}`") from None
    try:
        slow = [address for address, fixed in cluster.client.run(_warm_up).items() if not fixed]
    except ImportError as exc:
        cluster.close()
        raise ConfigError(f"the Dask workers cannot import onnxq ({exc}); install onnxq (and its model's "
                          "dependencies) on every worker") from None
    if slow:
        logger.warning("%d Dask worker(s) run with MALLOC_TRIM_THRESHOLD_ and no MALLOC_MMAP_THRESHOLD_ (Dask's "
                       "default), which makes onnxq's statistics up to 1.7x slower; start them with %s dask worker "
                       "... (README, Scale out on Dask)", len(slow), MMAP_HINT)
    return cluster


def _warm_up() -> bool:
    """Import onnxq's worker side (numpy, onnx, ONNX Runtime) once per worker, before the clock of the
    first shard starts (a fresh worker process otherwise pays it inside the first task); ``False``
    when the worker's allocator runs with a fixed mmap threshold (see the module docstring)."""
    import os

    import onnxq.calibration.runner  # noqa: F401
    import onnxq.distributed.pairs  # noqa: F401  (the engine, ONNX Runtime)
    import onnxq.validate  # noqa: F401

    return "MALLOC_TRIM_THRESHOLD_" not in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ


@contextlib.contextmanager
def open_cluster(spec: Any) -> Iterator[Any]:
    """Yield a ``Client`` for ``spec`` (a spec string, or a ``Client`` used as is and left open)."""
    if not isinstance(spec, str):
        yield spec
        return
    cluster = connect(spec)
    logger.info("Dask: %d worker(s) at %s", cluster.workers, cluster.client.scheduler.address)
    try:
        yield cluster.client
    finally:
        cluster.close()
