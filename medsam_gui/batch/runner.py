"""Run a manifest's cases on Dask distributed and keep the report up to date.

Without a scheduler address a :class:`distributed.LocalCluster` of worker processes (one thread
each) is started and closed again; with one (``tcp://host:8786``) the cases go to that existing
cluster (its workers must see the same files: a shared file system). Each finished case is
added to ``report.csv`` at once (atomically), so an interrupted run loses nothing finished.
A worker that dies mid-case has the case rescheduled by the scheduler; ``run_case`` is
idempotent. Ctrl-C cancels what is left, closes the cluster, writes the report and re-raises
KeyboardInterrupt; a rerun with ``resume=True`` goes on from there.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from distributed import WorkerPlugin

from ..errors import CheckpointError, MedsamGuiError
from . import report as reports
from .manifest import Case, file_checksum, read_manifest
from .progress import Progress
from .tasks import Settings, run_case

MODELS = ("medsam", "litemedsam", "medsam2", "universeg", "hermes", "universal", "universal_text_embedding")
DEVICES = ("auto", "cpu", "cuda")
GIB = 1024 ** 3
MEMORY_PER_WORKER = 4 * GIB  # a worker holding a model and a CT comfortably


class BatchError(MedsamGuiError):
    """Bad batch options (device, checkpoints, output folder, scheduler)."""


@dataclass
class BatchSummary:
    """The outcome: ``rows`` (report rows in manifest order), the output folder, the report
    files, the Dask dashboard link."""

    out_dir: Path
    rows: list[dict] = field(default_factory=list)
    report_csv: Path | None = None
    report_html: Path | None = None
    dashboard: str | None = None

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")


class LeaveCtrlCToTheBatch(WorkerPlugin):
    """On the workers of our own LocalCluster: ignore SIGINT. Ctrl-C in a terminal reaches the
    whole process group; the batch process then stops the workers itself (report written,
    cluster closed) instead of each worker dying with a traceback."""

    name = "medsam-gui-leave-ctrl-c-to-the-batch"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """Worker processes for this machine: one per GPU when CUDA is present, else half the cores
    (torch uses two threads each) within the memory (about 4 GiB each), at least one."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 8 * GIB
    return max(1, min(cores // 2, memory // MEMORY_PER_WORKER))


def _check_checkpoints(checkpoints: Mapping[str, object] | None) -> dict[str, str]:
    out = {}
    for model, path in (checkpoints or {}).items():
        if model not in MODELS:
            raise BatchError(f"--checkpoint {model}=...: unknown model; choose one of {', '.join(MODELS)}.")
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise CheckpointError(f"--checkpoint {model}={path}: the file does not exist.")
        out[model] = str(p)
    return out


def _installed(api: ModuleType, model: str) -> str:
    """The installed weights of a model (CheckpointError saying how to get them otherwise)."""
    if model == "medsam2":
        return str(api.resolve_medsam2_checkpoint())
    if model == "universeg":
        from ..models import weights

        found = weights.resolve("universeg_v1")
        if found is None:
            raise CheckpointError("no UniverSeg weights installed: pass --checkpoint universeg=FILE, or install them "
                                  "once with `medsam-gui weights download universeg_v1`.")
        return str(found)
    return str(api.resolve_checkpoint(model))


def unchanged(case: Case, previous: dict | None) -> bool:
    """True when ``previous`` (an earlier report row) finished this case and neither its inputs
    nor its label map changed since (checksums)."""
    if previous is None or previous.get("status") not in ("ok", "skipped"):
        return False
    label_map = Path(previous.get("label_map") or "")
    return (label_map.is_file() and file_checksum(label_map) == previous.get("output_sha256")
            and case.input_checksum() == previous.get("input_sha256"))


def _failed_row(case: Case, message: str) -> dict:
    return {"case": case.name, "row": case.row, "scan": str(case.scan), "task": case.task, "model": case.model,
            "status": "failed", "message": message, "seconds": 0.0, "worker": ""}


def _cluster(workers: int | None, scheduler: str | None, device: str):
    """(client, cluster or None, torch threads per worker or None)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None, None
        except (OSError, TimeoutError) as exc:
            raise BatchError(f"Cannot reach the Dask scheduler at {scheduler} ({exc}); check the address and "
                             "that the scheduler runs.") from None
    n = int(workers or default_workers())
    if n < 1:
        raise BatchError(f"--workers must be at least 1, got {n}.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    try:
        client = Client(cluster)
        client.register_plugin(LeaveCtrlCToTheBatch())
        return client, cluster, (max(1, cores // n) if device != "cuda" else None)
    except BaseException:
        cluster.close()
        raise


def run_batch(api: ModuleType, manifest, out, *, workers: int | None = None, scheduler: str | None = None,
              device: str | None = None,
              checkpoints: Mapping[str, object] | None = None, resume: bool = False, report: bool = False,
              quiet: bool = True, on_case: Callable[[dict], None] | None = None,
              before_case: Callable[[Case], None] | None = None) -> BatchSummary:
    """Run every case of the manifest (module docstring); returns the BatchSummary.

    ``api``: the :mod:`medsam_gui.api` module, whose functions the cases use (``api.run_batch``
    passes itself: the api imports this module, which therefore does not import the api).
    ``workers``: processes of the LocalCluster (default :func:`default_workers`); ``scheduler``:
    an existing cluster's address instead; ``device``: "auto" (default), "cpu" or "cuda";
    ``checkpoints``: {model: weights file} (else the installed weights); ``resume``: skip the
    cases :func:`unchanged` since the last report; ``report``: also write report.html;
    ``on_case(row)``: called in this process as each case finishes; ``before_case(case)``: run
    on the worker before each case. Raises ManifestError (every bad row) or BatchError /
    CheckpointError before any model loads."""
    device = (device or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise BatchError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if workers is not None and scheduler:
        raise BatchError("give either a number of workers (a local cluster) or a scheduler address, not both.")
    cases = read_manifest(manifest)
    ckpts = _check_checkpoints(checkpoints)
    out_dir = Path(out).expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"Cannot create the output folder {out_dir}: {exc.strerror or exc}.") from None
    previous = reports.read_csv(out_dir) if resume else {}
    rows: dict[str, dict] = {}
    for case in cases:
        if resume and unchanged(case, previous.get(case.name)):
            rows[case.name] = {**previous[case.name], "row": case.row, "status": "skipped",
                               "message": "unchanged since the last run"}
    todo = [c for c in cases if c.name not in rows]
    for model in sorted({c.model for c in todo if c.task != "auto"} - set(ckpts)):
        ckpts[model] = _installed(api, model)
    summary = BatchSummary(out_dir)
    progress = Progress(len(cases), skipped=len(rows), quiet=quiet)

    def finish(interrupted: bool) -> BatchSummary:
        summary.rows = sorted(rows.values(), key=lambda r: int(r["row"]))
        summary.report_csv = reports.write_csv(out_dir, summary.rows)
        if report:
            summary.report_html = reports.write_html(out_dir, summary.rows)
        progress.close()
        if interrupted:
            progress.say(f"stopped: {len(summary.rows)} of {len(cases)} cases are in {summary.report_csv}; "
                         "run again with --resume to go on.")
        return summary

    if not todo:
        return finish(False)
    client, cluster, threads = _cluster(workers, scheduler, device)
    settings = Settings(api, str(out_dir), device, ckpts, threads, before_case)
    futures = {}
    try:
        from distributed import as_completed

        summary.dashboard = client.dashboard_link
        if summary.dashboard:
            progress.say(f"Dask dashboard: {summary.dashboard}")
        progress.draw()
        run_id = os.urandom(4).hex()
        futures = {client.submit(run_case, case, settings, pure=False, key=f"case-{case.row}-{case.name}-{run_id}"): case
                   for case in todo}
        for fut in as_completed(futures):
            case = futures[fut]
            if fut.status == "finished":
                row = fut.result()
            else:
                row = _failed_row(case, f"the worker failed: {fut.exception()}")
            rows[case.name] = row
            reports.write_csv(out_dir, sorted(rows.values(), key=lambda r: int(r["row"])))
            progress.case_finished(row)
            if on_case is not None:
                on_case(row)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        finish(True)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return finish(False)
