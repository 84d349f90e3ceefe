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


def _initial():
    forced = os.environ.get("FASTATTN_SIMD", "").strip().lower()
    if forced:
        try:
            return _check(forced)
        except ValueError as err:
            raise ImportError(f"FASTATTN_SIMD={forced!r}: {err}") from None
    return available()[0]


_active = _initial()


def active():
    """The instruction set the kernels use now."""
    return _active


@contextlib.contextmanager
def forced(name):
    """Run the enclosed code with the kernels for ``name`` (for tests and benchmarks)."""
    global _active
    previous, _active = _active, _check(name)
    try:
        yield name
    finally:
        _active = previous


def _initial_cache_prefetch():
    forced = os.environ.get("FASTATTN_CACHE_PREFETCH", "").strip().lower()
    if forced:
        if forced not in _sdpa.CACHE_PREFETCH_NAMES:
            raise ImportError(f"FASTATTN_CACHE_PREFETCH={forced!r}: expected one of "
                              f"{_sdpa.CACHE_PREFETCH_NAMES}")
        return forced
    return _sdpa.cpu_cache_prefetch()


_cache_prefetch = _initial_cache_prefetch()


def cache_prefetch():
    """Where the decoding path's software prefetch puts cache rows now: "l1" or "l2"."""
    return _cache_prefetch


@contextlib.contextmanager
def forced_cache_prefetch(name):
    """Run the enclosed code with decoding's prefetch into ``name`` ("l1" or "l2")."""
    global _cache_prefetch
    if name not in _sdpa.CACHE_PREFETCH_NAMES:
        raise ValueError(f"unknown cache prefetch {name!r}; expected one of "
                         f"{_sdpa.CACHE_PREFETCH_NAMES}")
    previous, _cache_prefetch = _cache_prefetch, name
    try:
        yield name
    finally:
        _cache_prefetch = previous
