"""Reading ahead on a second core: a producer thread pulls items from an iterator made and
closed in that thread, while the caller works on the previous ones. Worth it when both
sides release the GIL (Arrow readers and pyarrow.compute do)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


def prefetched(make: Callable[[], Iterator[T]], depth: int = 2) -> Iterator[T]:
    """The items of `make()`, read up to `depth` ahead in a thread. The iterator is made,
    consumed and closed in that thread (drivers that keep a connection per thread see
    one thread); an error there is raised here; leaving early stops and joins it."""
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            it = make()
            try:
                for item in it:
                    if not put((_ITEM, item)):
                        return
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            put((_END, None))
        except BaseException as exc:  # handed to the consumer
            put((_ERROR, exc))

    thread = threading.Thread(target=produce, name="exportd-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()
