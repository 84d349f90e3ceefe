"""``python -m fastattn bench --dask`` runs (tiny sizes)."""
import subprocess
import sys

import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")


def test_bench_dask_command_runs():
    result = subprocess.run(
        [sys.executable, "-m", "fastattn", "bench", "--dask", "--heads", "2", "--repeats", "1",
         "--dask-batch", "2", "--dask-length", "128", "--dask-long-length", "1024"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "throughput ratio 2 vs 1 worker(s)" in result.stdout
    assert "36 attention tasks for 64 (query, key) chunk pairs" in result.stdout
    assert "largest worker peak" in result.stdout and "(equal," in result.stdout
