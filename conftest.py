"""Threads of a test run split over pytest-xdist workers.

Torch and OpenMP spin-wait on shared cores: two processes that each take every core run many
times slower than one. Under ``pytest -n N`` each worker (and each notebook kernel or process it
starts, which inherit the environment) gets its share of the cores, set here before torch is
imported anywhere (``OMP_NUM_THREADS``, if set lower, is kept). ``pytest -n 0`` runs in one
process with every core.
"""

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker is not None:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _threads = max(1, _cores // _workers)
    _asked = os.environ.get("OMP_NUM_THREADS", "")
    if _asked.isdigit() and int(_asked) > 0:  # fewer threads asked for: fewer
        _threads = min(_threads, int(_asked))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(_threads)
