"""python -m fastattn demo: runs, shows every sentence, and its options work."""
import os
import subprocess
import sys

import pytest

from fastattn import demo
from tests.png import png_size


def run_demo(*args, **env):
    return subprocess.run([sys.executable, "-m", "fastattn", "demo", *args], capture_output=True,
                          text=True, env={**os.environ, **env})


def test_demo_prints_every_sentence_and_prediction():
    result = run_demo("--seed", "3")
    assert result.returncode == 0, result.stderr
    for sentence in demo.SENTENCES:
        assert f": {sentence}" in result.stdout
    assert result.stdout.count("predicted next word: after 'to' -> ") == len(demo.SENTENCES)
    assert "BANK_2 = 0.8 bank + 0.2 money = [6.4, 4.8]" in result.stdout
    assert run_demo("--seed", "3").stdout == result.stdout          # reproducible


def test_demo_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "heatmaps.png"
    result = run_demo("--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size > 10_000
    assert png_size(path) == (1650, 1045)      # 15 x 9.5 inches at 110 dpi: 2 x 3 heatmaps


def test_demo_plot_without_matplotlib(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from fastattn.__main__ import main; "
            f"main(['demo', '--plot', {str(tmp_path / 'x.png')!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "--plot needs matplotlib" in result.stderr
