"""Which instruction set the kernels run with, and where decoding prefetches.

The build compiles the kernels for baseline x86-64, AVX2+FMA and AVX-512; at
import the best one this CPU supports is chosen, unless ``FASTATTN_SIMD`` names
one (``baseline``, ``avx2`` or ``avx512``), which tests and benchmarks use.

The decoding path streams the KV cache from memory with a software prefetch ahead
of its loads, into L1 or into L2: which is faster depends on the CPU (into L1 on
Intel; into L2 on AMD, 1.7-2x there), so it is chosen at import too, unless
``FASTATTN_CACHE_PREFETCH`` names one (``l1`` or ``l2``). Results never depend on it.
"""
import contextlib
import os

from fastattn import _sdpa

PREFERENCE = ("avx512", "avx2", "baseline")


def available():
    """Instruction sets that are both built and supported by this CPU, best first."""
    built = _sdpa.built_isas()
    return tuple(name for name in PREFERENCE if name in built and _sdpa.cpu_supports(name))


def _check(name):
    if name not in _sdpa.ISA_NAMES:
        raise ValueError(f"unknown SIMD path {name!r}; expected one of {_sdpa.ISA_NAMES}")
    if name not in available():
        raise ValueError(f"SIMD path {name!r} is not available here; available: {available()}")
    return name


def _check_cache_prefetch(name):
    if name not in _sdpa.CACHE_PREFETCH_NAMES:
        raise ValueError(f"unknown cache prefetch {name!r}; expected one of "
                         f"{_sdpa.CACHE_PREFETCH_NAMES}")
    return name


def _from_environment(variable, check, default):
    """The choice the environment variable names (checked), else ``default()``; a
    name that fails its check fails the import."""
    forced_name = os.environ.get(variable, "").strip().lower()
    if not forced_name:
        return default()
    try:
        return check(forced_name)
    except ValueError as err:
        raise ImportError(f"{variable}={forced_name!r}: {err}") from None


# the choices in force now
_chosen = {"isa": _from_environment("FASTATTN_SIMD", _check, lambda: available()[0]),
           "cache_prefetch": _from_environment("FASTATTN_CACHE_PREFETCH", _check_cache_prefetch,
                                               _sdpa.cpu_cache_prefetch)}


@contextlib.contextmanager
def _overridden(choice, value):
    previous, _chosen[choice] = _chosen[choice], value
    try:
        yield value
    finally:
        _chosen[choice] = previous


def active():
    """The instruction set the kernels use now."""
    return _chosen["isa"]


def forced(name):
    """Run the enclosed code with the kernels for ``name`` (for tests and benchmarks)."""
    return _overridden("isa", _check(name))


def cache_prefetch():
    """Where the decoding path's software prefetch puts cache rows now: "l1" or "l2"."""
    return _chosen["cache_prefetch"]


def forced_cache_prefetch(name):
    """Run the enclosed code with decoding's prefetch into ``name`` ("l1" or "l2")."""
    return _overridden("cache_prefetch", _check_cache_prefetch(name))
