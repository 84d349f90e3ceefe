"""show_config and the FASTATTN_SIMD and FASTATTN_CACHE_PREFETCH overrides."""
import os
import subprocess
import sys

import pytest

import fastattn
from fastattn import _simd


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_show_config_lists_paths_threads_and_blas(capsys):
    fastattn.show_config()
    text = capsys.readouterr().out
    assert fastattn.__version__ in text
    assert "baseline" in text
    assert f"SIMD path active:     {_simd.active()} (" in text
    assert f"decoding prefetch:    into {_simd.cache_prefetch().upper()}" in text
    assert "OpenMP:" in text and "BLAS:" in text


@pytest.mark.parametrize("variable,getter,name",
                         [("FASTATTN_SIMD", "active", name) for name in _simd.available()]
                         + [("FASTATTN_CACHE_PREFETCH", "cache_prefetch", name)
                            for name in ("l1", "l2")])
def test_the_environment_forces_a_choice(variable, getter, name):
    result = run_python(f"import fastattn._simd as s; print(s.{getter}())", **{variable: name})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_fastattn_simd_rejects_unknown_names():
    result = run_python("import fastattn", FASTATTN_SIMD="neon9")
    assert result.returncode != 0
    assert "FASTATTN_SIMD='neon9'" in result.stderr


def test_fastattn_cache_prefetch_rejects_unknown_names():
    result = run_python("import fastattn", FASTATTN_CACHE_PREFETCH="l3")
    assert result.returncode != 0
    assert "FASTATTN_CACHE_PREFETCH='l3'" in result.stderr
    with pytest.raises(ValueError, match="unknown cache prefetch 'l3'"):
        with _simd.forced_cache_prefetch("l3"):
            pass


def test_the_default_cache_prefetch_follows_the_cpu_vendor():
    with open("/proc/cpuinfo") as cpuinfo:
        text = cpuinfo.read()
    if "AuthenticAMD" not in text and "GenuineIntel" not in text:
        pytest.skip("neither an AMD nor an Intel CPU")
    expected = "l2" if "AuthenticAMD" in text else "l1"
    result = run_python("import fastattn._simd as s; print(s.cache_prefetch())",
                        FASTATTN_CACHE_PREFETCH="")
    assert result.stdout.strip() == expected


def test_omp_num_threads_is_the_default():
    result = run_python("from fastattn import _sdpa; print(_sdpa.max_threads())",
                        OMP_NUM_THREADS="3")
    assert result.stdout.strip() == ("3" if fastattn._sdpa.openmp_enabled() else "1")
