"""One place that creates HiGHS solver instances (highspy), silently.

Owns `new_highs`. Imports highspy only.
"""

from __future__ import annotations

import os
import sys
import threading

import highspy

__all__ = ["new_highs"]

_CONSTRUCT_LOCK = threading.Lock()


def new_highs() -> highspy.Highs:
    """A silent HiGHS instance.

    HiGHS prints its banner from C++ to file descriptor 1 inside the constructor, before any
    option can be set, which would garble `edgesplit plan`'s output; the constructor runs with
    descriptor 1 pointed at /dev/null (under a lock; only the constructor call is covered).
    """
    with _CONSTRUCT_LOCK:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as sink:
                os.dup2(sink.fileno(), 1)
                highs = highspy.Highs()  # type: ignore[no-untyped-call]  # unannotated
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("random_seed", 0)
    # One thread, as everywhere in edgesplit (shared 2-core machines; CPU time = quiet time).
    highs.setOptionValue("threads", 1)
    return highs
