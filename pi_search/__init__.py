"""pi-search: an offline visual search appliance for the Raspberry Pi."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The daemon commands run numpy's BLAS on one thread (bootstrap.single_threaded_blas); OpenBLAS and OpenMP
# would otherwise start a thread per core, with its own buffers, the moment numpy loads, which is before
# any command runs. So the entry point says so here, first, unless the environment already does.
_DAEMON_COMMANDS = ("serve", "demo")
if any(_a in _DAEMON_COMMANDS for _a in _sys.argv[1:4]):
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_name, "1")
