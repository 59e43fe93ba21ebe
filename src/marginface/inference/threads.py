"""How many threads inference uses: ``$MARGINFACE_THREADS``, else ``min(physical cores, 4)`` less the cores other
processes keep busy now (the 1-minute load average), and at least 1.

torch's default is one intra-op thread per *logical* core the process may use. The photo path (``verify``,
``identify``: one or two faces per forward, with the detector's small networks before them) gains little from
more threads and loses a lot when they outnumber the cores really free: torch's threads wait for each other at
every operator, so one descheduled thread stalls all of them (the issue measured 168 ms per face with 2 threads
and 13 ms with 1 on a busy 2-core machine). Hyper-threads share a core's arithmetic units, so physical cores are
counted, and more than 4 threads buys nothing measurable for a ~1 GFLOP face network at these batch sizes.
Cores that other processes keep busy are not free: measured on a 2-core machine at load average 17,
MobileFaceNet took 64 ms per face on 1 thread and 1,633 ms on torch's 2 (docs/inference.md has the numbers and
the command, ``benchmarks/inference_threads.py``).
"""

from __future__ import annotations

import os

from marginface.errors import UserError

#: Environment variable overriding the inference thread count (a positive integer).
THREADS_ENV = "MARGINFACE_THREADS"
#: Upper bound of the default: beyond it, no measurable gain for face-sized networks.
MAX_DEFAULT_THREADS = 4


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (logical CPUs / hyper-threads per core)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, logical // _threads_per_core())


def _threads_per_core() -> int:
    """Hyper-threads per core from /proc/cpuinfo ("siblings" / "cpu cores"); 1 where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as handle:
            fields = dict(line.split(":", 1) for line in handle if line.startswith(("siblings", "cpu cores")))
        return max(1, int(fields["siblings"]) // int(fields["cpu cores"]))
    except (OSError, KeyError, ValueError):  # not Linux, or a CPU that does not report them
        return 1


def default_threads(load: float | None = None) -> int:
    """``$MARGINFACE_THREADS`` if set, else ``min(physical cores, 4, physical cores - round(load))``, at least 1.

    Args:
        load: runnable processes competing for the cores (default: the 1-minute load average, 0 where the system
            does not report one). Read once, when a recognizer is built: later load changes are not followed.

    Raises:
        UserError: ``$MARGINFACE_THREADS`` is not a positive integer.
    """
    value = os.environ.get(THREADS_ENV)
    if value is None or value.strip() == "":
        cores = physical_cores()
        if load is None:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(1, min(cores, MAX_DEFAULT_THREADS, cores - round(load)))
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise UserError(f"{THREADS_ENV}={value!r}: expected a positive integer (threads for inference), e.g. 1")
    return threads
