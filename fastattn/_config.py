"""``show_config``: what this build of fastattn is and what it will run with."""
import platform
import sys

import numpy as np

from fastattn import _sdpa, _simd
from fastattn._version import __version__


def cpu_model():
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def config():
    """The facts ``show_config`` prints, as a dict."""
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "simd_built": list(_sdpa.built_isas()),
        "simd_supported": list(_simd.available()),
        "simd_active": _simd.active(),
        "lanes_float32": _sdpa.lanes(_simd.active(), False),
        "cache_prefetch": _simd.cache_prefetch(),
        "openmp": _sdpa.openmp_enabled(),
        "threads": _sdpa.max_threads(),
        "blas": "none: own SIMD micro-kernels for both matrix products",
    }


def show_config():
    """Print the version, SIMD paths built and chosen, OpenMP and threads, and BLAS."""
    info = config()
    print(f"fastattn {info['version']} (Python {info['python']}, NumPy {info['numpy']})")
    print(f"  CPU:                  {info['cpu']}")
    print(f"  SIMD paths built:     {', '.join(info['simd_built'])}")
    print(f"  SIMD paths supported: {', '.join(info['simd_supported'])}")
    lanes = info["lanes_float32"]
    width = "portable C, 1 lane" if lanes == 1 else f"{lanes} float32 lanes"
    print(f"  SIMD path active:     {info['simd_active']} ({width})  (FASTATTN_SIMD to force)")
    print(f"  decoding prefetch:    into {info['cache_prefetch'].upper()} "
          f"(FASTATTN_CACHE_PREFETCH to force)")
    print(f"  OpenMP:               {'on' if info['openmp'] else 'off'}, "
          f"{info['threads']} thread(s) by default (OMP_NUM_THREADS)")
    print(f"  BLAS:                 {info['blas']}")
