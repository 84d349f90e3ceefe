"""python -m fastattn demo: runs, shows every sentence, and its options work (--train too)."""
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


def without_timing(stdout):
    return [line for line in stdout.splitlines() if not line.startswith("trained in ")]


def test_demo_train_learns_every_next_word():
    result = run_demo("--train", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "counts as correct when some sentence that begins with the same words" in result.stdout
    assert "step  200  loss 0.16" in result.stdout and "right 29/29" in result.stdout
    assert "accuracy 100%" in result.stdout
    for sentence in demo.SENTENCES:
        assert f": {sentence}" in result.stdout
    assert "attention of 'lazy' (predicting 'dog.')" in result.stdout
    assert "WRONG" not in result.stdout
    assert result.stdout.count("right*") == 5      # the rows after 'The' and 'I'
    assert without_timing(run_demo("--train", "--seed", "2").stdout) == \
        without_timing(result.stdout)               # reproducible


def test_demo_train_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "trained.png"
    result = run_demo("--train", "--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size > 10_000
    assert png_size(path) == (2200, 1045)   # 20 x 9.5 inches at 110 dpi: curves + 6 heatmaps
