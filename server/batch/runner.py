"""Batch jobs on Ray Data: item vectors for a catalogue file, and every known user's top-N.

The driver reads and checks the input, then Ray Data streams it in blocks through a fixed pool of
actors (one CPU each), each holding one Engine built from the serving bundle (batch_jobs.py), and
writes Parquet. Workers open the bundle and write the output by path, so on a cluster both must be
on storage every node reads (and, for the output, writes) at the same path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..catalog.snapshot import read_csv
from ..core.limits import Limits
from ..core.manifest import ServingManifest
from .jobs import Bundle, ItemEmbedder, UserRecommender, read_items, users_table

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """What a job wrote: rows, where, its wall time (Ray already running) and the actor pool's size."""

    rows: int
    out: Path
    seconds: float
    actors: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@contextlib.contextmanager
def ray_session(address: str | None = None, verbose: bool = False) -> Iterator[int]:
    """Connects to the cluster at ``address`` (``auto``, ``HOST:6379`` or ``ray://HOST:10001``), or
    starts a local Ray with this machine's CPUs; yields the cluster's CPU count.

    A Ray this process already started (a test's, a notebook's) is used as it is and left running.
    """
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started and address:
        # Worker output (warnings, errors, prints) reaches this terminal; INFO logs stay in the workers.
        ray.init(address=address, log_to_driver=True)
    elif started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
    if not verbose:  # off a terminal Ray Data logs its plan and progress every few seconds; -v keeps them
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()


def bundle_root(artifacts: Path | str) -> str:
    """The serving folder as an absolute path (workers do not share this process's working directory);
    the training folder A also works, as for `serve`."""
    from ..api.app import resolve_artifacts

    return str(resolve_artifacts(Path(artifacts)).resolve())


def _target(out: Path | str, overwrite: bool) -> Path:
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists: pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _write(ds, out: Path, writers: int) -> None:
    """Writes ``ds`` as a folder of Parquet files at ``out``, all or nothing: into a sibling folder,
    renamed into place once every worker has written its part (an old ``out`` is removed after)."""
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        # No CPU for the writers: the actors hold every CPU the job asked for until their input runs
        # out, and a writer needing one would hold every finished block in memory until then. At most
        # one writer per actor: unbounded zero-CPU tasks each started a worker process (a recommend
        # job on 10,000 users took 67 s with them, 36 s like this).
        with warnings.catch_warnings():  # Ray warns when fewer blocks than writers reach the sink
            warnings.filterwarnings("ignore", "The maximum number of concurrent tasks", UserWarning)
            ds.write_parquet(str(tmp), ray_remote_args={"num_cpus": 0}, concurrency=writers)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _map(ds, job: type, kwargs: dict, actors: int, batch_size: int):
    import ray.data

    return ds.map_batches(
        job,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        udf_modifying_row_count=False,
    )


def _dataset(table, batch_size: int, actors: int):
    """``table`` as a dataset of blocks of about one batch, at least one per actor (a block goes to one).

    Built from the driver's table, so no read task competes with the actors, which hold every CPU the
    job asked for (a ``ray.data.range`` read waited for a CPU forever behind a 2-actor pool on 2 CPUs).
    """
    import ray.data

    n = table.num_rows
    k = max(1, min(n, max(-(-n // batch_size), actors)))
    return ray.data.from_arrow([table.slice(a * n // k, (a + 1) * n // k - a * n // k) for a in range(k)]), k


def embed(
    bundle: Bundle,
    items: Path | str,
    out: Path | str,
    actors: int,
    batch_size: int = 256,
    recompute: bool = False,
    overwrite: bool = False,
) -> JobResult:
    """Item vectors for every row of ``items`` (a CSV with items.csv's columns) -> Parquet at ``out``:
    item_id, vector (list<float32>), model_version. Needs a Ray session (:func:`ray_session`)."""
    table = read_items(items)  # every row checked before a worker starts
    out = _target(out, overwrite)
    t0 = time.perf_counter()
    ds, k = _dataset(table, batch_size, actors)
    actors = min(actors, k)
    _write(
        _map(ds, ItemEmbedder, {"bundle": bundle, "recompute": recompute}, actors, batch_size), out, actors
    )
    return JobResult(table.num_rows, out, time.perf_counter() - t0, actors)


def known_users(root: str) -> int:
    """How many known users the bundle has (rows of its users.csv), read without loading the model."""
    m = ServingManifest.load(root, verify_hashes=False)
    return len(read_csv(Path(root) / m.catalog.users_file, ("user_id",)))


def recommend(
    bundle: Bundle,
    out: Path | str,
    actors: int,
    top_n: int = 100,
    batch_size: int = 1000,
    overwrite: bool = False,
) -> JobResult:
    """Every known user's top ``top_n`` (the server's Recommend with exclude_seen, no filters) ->
    Parquet at ``out``: user_id, item_ids, scores (list<float32>), model_version."""
    limit = Limits().max_top_n
    if not 1 <= top_n <= limit:
        raise ValueError(f"--top-n must be in [1, {limit}], as Recommend's top_n (got {top_n})")
    out = _target(out, overwrite)
    t0 = time.perf_counter()
    n = known_users(bundle.root)
    ds, k = _dataset(users_table(n), batch_size, actors)
    actors = min(actors, k)
    _write(_map(ds, UserRecommender, {"bundle": bundle, "top_n": top_n}, actors, batch_size), out, actors)
    return JobResult(n, out, time.perf_counter() - t0, actors)
