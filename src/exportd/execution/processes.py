"""`exportd serve`'s workers as processes of their own: each runs one worker (with its
heartbeats, the janitor, the deadline timer and its notification threads) on the same
store and storage as the API, so that no two of them, nor the API, share one
interpreter's lock. They behave as `exportd worker` processes do: claims, leases and
fenced commits go through the store, so a worker process that dies is a lost worker like
any other. They stop with the server (SIGTERM: the graceful hand-back of
`execution/shutdown.py`), and die with it when it is killed (the kernel's parent-death
signal, and a watch of the parent as the fallback)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.process import BaseProcess

from exportd.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux), else exit when it sees it gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exportd-parent-watch", daemon=True).start()


# how much lower than the server's the scheduling priority of `serve`'s worker processes is
WORKER_NICENESS = 5


def run_worker_process(settings: Settings, parent: int) -> None:
    """The body of one worker process (spawned: a fresh interpreter, which must set its
    allocator up and keep pandas out as the `exportd` command does in its own)."""
    from exportd.memory import configure_allocator, keep_pandas_out

    configure_allocator()
    keep_pandas_out()
    with contextlib.suppress(OSError):  # exports are background work: on a busy machine
        os.nice(WORKER_NICENESS)  # the server's answers (status polls) go first
    from exportd.execution.pool import WorkerPool
    from exportd.runtime import Runtime

    _die_with_parent(parent)
    from exportd.logs import configure

    configure(settings.log_format)  # text or JSON, as the server's
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rt = Runtime(settings)
    _warm_up()
    pool = WorkerPool(rt, 1)
    pool.start()
    stop.wait()
    pool.stop()  # within shutdown_grace_seconds, then the leases in hand are handed back
    rt.close()


def _warm_up() -> None:
    """The modules every task kind runs on imported before the first task, then what
    they made (about 200,000 objects that live as long as the process) moved out of the
    collector's sight: its full collections walk only what tasks make (they took a fifth
    of an import's CPU in its workers)."""
    import importlib

    for name in ("pyarrow.compute", "pyarrow.csv", "pyarrow.parquet", "psycopg",
                 "sqlalchemy.dialects.postgresql.psycopg", "exportd.execution.kinds",
                 "exportd.execution.imports.loading", "exportd.execution.imports.publishing",
                 "exportd.execution.imports.streaming"):  # fmt: skip
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    gc.collect()
    gc.freeze()


class WorkerProcesses:
    """`count` worker processes, started and stopped with the server (the same interface
    as `WorkerPool`)."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.procs: list[BaseProcess] = []

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no inherited threads, locks or sockets
        for i in range(self.count):
            proc = ctx.Process(
                target=run_worker_process,
                args=(self.settings, os.getpid()),
                name=f"exportd-worker-process-{i}",
                daemon=False,
            )
            proc.start()
            self.procs.append(proc)
        log.info("%d worker processes started", self.count)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to each (they stop claiming, finish or hand back within the grace),
        then SIGKILL to any still running a few seconds past it."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        for proc in self.procs:
            if proc.is_alive() and proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.join(grace + 5.0)
            if proc.is_alive():
                log.warning("worker process %s did not stop in time; killed", proc.pid)
                proc.kill()
                proc.join(5.0)
