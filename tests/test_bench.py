"""The benchmark command runs, and its slope fit is right."""
import re
import subprocess
import sys

import numpy as np
import pytest

from fastattn.__main__ import main
from fastattn._config import cpu_model
from fastattn.bench import fitted_slope, slope_fit
from tests.png import png_size


def test_fitted_slope_of_a_quadratic():
    lengths = [256, 512, 1024, 2048, 4096]
    seconds = [1e-9 * n**2 + 2e-5 for n in lengths]   # a fixed cost, felt at short L only
    assert fitted_slope(lengths, seconds) == pytest.approx(2.0, abs=0.05)
    assert np.isnan(fitted_slope([256], [1.0]))


def test_bench_command_runs(tmp_path):
    args = ["--lengths", "128", "256", "--head-dims", "16", "--heads", "2", "--repeats", "1",
            "--memory-length", "1024", "--no-mha", "--no-blog", "--no-train",
            "--window-lengths", "256", "512", "--window-mask-max-length", "256",
            "--decode-max-length", "1024"]
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
    assert "decode over a KV cache" in result.stdout and "% bw" in result.stdout
    assert f"CPU: {cpu_model()}; SIMD path " in result.stdout


def test_slope_fit_uses_what_was_measured():
    seconds = [1e-9 * n**2 for n in (128, 256, 512, 1024, 2048, 4096)]
    slope, used = slope_fit([128, 256, 512, 1024, 2048, 4096], seconds)
    assert used == [1024, 2048, 4096] and slope == pytest.approx(2.0)
    # a quick run stops at L = 1024: the 3 longest lengths measured, not "L >= 1024"
    assert slope_fit([256, 512, 1024], seconds[1:4]) == (pytest.approx(2.0), [256, 512, 1024])
    assert slope_fit([256, 512, 1024, 2048], [1.0, 4.0, None, 64.0])[1] == [256, 512, 2048]


def test_bench_plot(tmp_path, monkeypatch, capsys):
    """--plot writes a whole PNG of the expected size (1 head dim: 2 panels, 12 x 4.6
    inches at 110 dpi) and says which lengths the slopes were fitted over. In-process
    and without torch, to stay fast."""
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "bench.png"
    assert main(["bench", "--lengths", "64", "128", "256", "--head-dims", "16", "--heads", "2",
                 "--repeats", "1", "--memory-length", "0", "--no-mha", "--no-blog",
                 "--no-window", "--no-decode", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert "torch not installed" in out
    assert png_size(path) == (1320, 506)
    assert path.stat().st_size > 10_000
    assert f"plot written to {path}; slopes fitted over L = 64-256 (the longest measured" in out


def test_bench_train_section():
    """Training's forward + backward, fastattn.torch against torch: a row per head dim,
    mask and L, and the peak memory of each, measured in its own process."""
    pytest.importorskip("torch")
    args = ["--lengths", "64", "--head-dims", "16", "--heads", "2", "--repeats", "1",
            "--memory-length", "0", "--no-decode", "--no-window", "--no-mha", "--no-blog",
            "--train-lengths", "64", "96", "--train-memory-length", "256"]
    result = subprocess.run([sys.executable, "-m", "fastattn", "bench", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "training, forward + backward" in out and "torch skipped" not in out
    rows = re.findall(r"^\s+16\s+(no|yes)\s+(64|96)\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", out, re.M)
    assert sorted(rows) == [("no", "64"), ("no", "96"), ("yes", "64"), ("yes", "96")]
    memory = re.search(r"one causal forward \+ backward at L=256, H=2, D=16: "
                       r"fastattn (-?[\d.]+) MiB, torch (-?[\d.]+) MiB", out)
    assert memory, out
    assert "/proc VmHWM reset just before the call" in out


def test_bench_train_section_without_torch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["bench", "--lengths", "64", "--head-dims", "16", "--heads", "2",
                 "--repeats", "1", "--memory-length", "0", "--no-mha", "--no-blog",
                 "--no-window", "--no-decode", "--train-lengths", "64"]) == 0
    assert "training, forward + backward: skipped, torch is not installed" in \
        capsys.readouterr().out
