"""Threads of a test run split over pytest-xdist workers.

Torch and OpenMP spin-wait on shared cores: two processes that each take every core run many
times slower than one. Under ``pytest -n N`` each worker (and each notebook kernel or process it
starts, which inherit the environment) gets its share of the cores, set here before torch is
imported anywhere.
"""

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker is not None:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = _threads
