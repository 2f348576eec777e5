"""tidegate: a real-time inference streaming server.

Importing it caps numpy's BLAS thread pool at one thread (``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS``, where the environment does not set them, and only when numpy is not
imported yet). The server's numpy work is small matrices on threads of its own (log-mel
features on the ASR worker, the media pool, the engines' preprocessing), and a BLAS pool as
wide as the machine wakes, and spins, every core for each of them: log-mel features of 10 s
cost 21 CPU-ms with the pool against 6 with one thread on a 2-core machine, in the same wall
time, and on a 16-core GPU machine the ASR process burned 3.9 CPU-s per second at one stream
against 0.13 (docs/engines.md, "Threads outside ONNX Runtime"). An environment that sets
them keeps its own.
"""

import os as _os
import sys as _sys

if "numpy" not in _sys.modules:
    for _name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_name, "1")

__version__ = "0.1.0"
