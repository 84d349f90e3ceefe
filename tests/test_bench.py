"""The benchmark command runs, and its slope fit is right."""
import subprocess
import sys

import numpy as np
import pytest

from fastattn.bench import fitted_slope


def test_fitted_slope_of_a_quadratic():
    lengths = [256, 512, 1024, 2048, 4096]
    seconds = [1e-9 * n**2 + 2e-5 for n in lengths]   # a fixed cost, felt at short L only
    assert fitted_slope(lengths, seconds) == pytest.approx(2.0, abs=0.05)
    assert np.isnan(fitted_slope([256], [1.0]))


def test_bench_command_runs(tmp_path):
    args = ["--lengths", "128", "256", "--head-dims", "16", "--heads", "2", "--repeats", "1",
            "--memory-length", "1024", "--no-mha", "--no-blog",
            "--window-lengths", "256", "512", "--window-mask-max-length", "256"]
    try:
        import matplotlib  # noqa: F401
        args += ["--plot", str(tmp_path / "bench.png")]
    except ImportError:
        pass
    result = subprocess.run([sys.executable, "-m", "fastattn", "bench", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "fastattn ms" in result.stdout and "peak memory beyond inputs" in result.stdout
    assert "sliding window" in result.stdout and "torch mask ms" in result.stdout
