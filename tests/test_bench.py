"""The benchmark command runs, and its slope fit is right."""
import re
import subprocess
import sys

import numpy as np
import pytest

from fastattn.__main__ import main
from fastattn._config import cpu_model
from fastattn import bench
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
    speedups = [line for line in result.stdout.splitlines()
                if line.startswith("16-bit caches against float32")]
    assert len(speedups) == 1 and "float16 " in speedups[0] and "x faster" in speedups[0]
    try:
        import ml_dtypes  # noqa: F401
        assert "bfloat16 " in speedups[0]
        assert any(line.startswith("bfloat16 ") for line in result.stdout.splitlines())
    except ImportError:
        pass
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
    and without torch, onnxruntime or JAX, to stay fast."""
    pytest.importorskip("matplotlib")
    from fastattn import bench
    monkeypatch.setitem(sys.modules, "torch", None)
    for helper in ("_import_onnxruntime", "_import_jax"):
        monkeypatch.setattr(bench, helper, lambda *args: None)
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


TINY_PREFILL = ["bench", "--lengths", "32", "--head-dims", "16", "--heads", "2", "--repeats", "1",
                "--memory-length", "0", "--no-window", "--no-decode", "--no-mha", "--no-blog",
                "--no-train", "--batch-row", "2", "2", "16", "8"]


def _prefill_table(out):
    """The header and the data rows of the dense prefill table in ``out``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["B", "H"])
    rows = [line for line in lines[start + 2:] if line.startswith(" ") and
            line.split()[0].isdigit()]
    return lines[start], rows


PEER_IMPORTS = {"onnxrt": "_import_onnxruntime", "jax": "_import_jax",
                "sgemm": "_import_threadpoolctl"}


@pytest.mark.parametrize("peer, modules, columns", [
    ("onnxrt", ["onnxruntime", "onnx"], ["vs onnxrt"]),
    ("jax", ["jax"], ["vs jax"]),
    ("sgemm", ["threadpoolctl"], ["sgemm GF/s", "% sgemm"]),
])
def test_prefill_peer_columns_when_installed(peer, modules, columns, monkeypatch, capsys):
    """Each installed peer gets its columns, passes its check against fastattn and is
    timed on every row (batch 1 and the batched row). One peer at a time."""
    from fastattn import bench
    for module in modules:
        pytest.importorskip(module)
    monkeypatch.setitem(sys.modules, "torch", None)
    for other, helper in PEER_IMPORTS.items():
        if other != peer:
            monkeypatch.setattr(bench, helper, lambda *args: None)
    assert main(TINY_PREFILL) == 0
    out = capsys.readouterr().out
    header, rows = _prefill_table(out)
    assert all(column in header for column in columns)
    assert "skipped" not in out
    assert len(rows) == 4 and [row.split()[:2] for row in rows[-2:]] == [["2", "2"], ["2", "2"]]
    end = header.index(columns[-1]) + len(columns[-1])    # cells are right-aligned to it
    for row in rows:
        assert row[:end].split()[-1] not in ("-", "nan")
    if peer == "jax":
        assert "XLA's CPU pool" in out


def test_prefill_without_peers(monkeypatch, capsys):
    """No onnxruntime, JAX or threadpoolctl (nor torch): their columns are absent and
    the table is still printed, one row per shape."""
    from fastattn import bench
    monkeypatch.setitem(sys.modules, "torch", None)
    for helper in ("_import_onnxruntime", "_import_jax", "_import_threadpoolctl"):
        monkeypatch.setattr(bench, helper, lambda *args: None)
    assert main(TINY_PREFILL) == 0
    out = capsys.readouterr().out
    header, rows = _prefill_table(out)
    assert header.split() == ["B", "H", "D", "causal", "L", "fastattn", "ms", "GFLOP/s",
                              "vs", "numpy"]
    assert len(rows) == 4
    assert "onnxrt: onnxruntime not installed" in out and "jax: not installed" in out
    assert "sgemm: not measured (needs threadpoolctl" in out


def test_peer_import_helpers_without_the_peers(monkeypatch):
    from fastattn import bench
    for module in ("onnxruntime", "jax", "threadpoolctl"):
        monkeypatch.setitem(sys.modules, module, None)     # import raises ImportError
    assert bench._import_onnxruntime() is None
    assert bench._import_jax(1, np.float32) is None
    assert bench._import_threadpoolctl() is None
    assert bench._onnx_attention(1, 2, 2, 8, 8, 16, np.float32, 1) is None


def test_check_before_timing(capsys):
    from fastattn.bench import _checked
    ours = np.random.default_rng(0).standard_normal((1, 2, 8, 16), dtype=np.float32)
    good = lambda: ours + 1e-6                                          # noqa: E731
    assert _checked("good", good, ours) is good
    assert capsys.readouterr().out == ""
    assert _checked("off", lambda: ours + 1e-2, ours) is None
    assert _checked("f64", lambda: ours.astype(np.float64), ours) is None
    assert _checked("shape", lambda: ours[..., :4, :], ours) is None
    assert _checked("nan", lambda: np.where(ours > 2, np.nan, ours), ours) is None

    def raises():
        raise RuntimeError("no kernel\nfor this")
    assert _checked("raises", raises, ours) is None
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["off", "f64", "shape", "nan", "raises"]
    assert all("skipped (checked against fastattn before timing)" in line for line in lines)
    assert "differs from fastattn at" in lines[0] and "tolerance 0.0001" in lines[0]
    assert "returned float64" in lines[1] and lines[-1].endswith("no kernel")


def test_prefill_peer_with_a_wrong_result_is_not_timed(monkeypatch, capsys):
    """A peer whose output is off is reported and left out of the timing: its column
    shows '-' on that row, and it was called once (the check), not in the rounds."""
    from fastattn import bench
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(bench, "_import_jax", lambda *args: None)
    monkeypatch.setattr(bench, "_import_onnxruntime",
                        lambda: type("FakeOnnxruntime", (), {"__version__": "0.0"}))
    calls = []

    class WrongSession:
        def run(self, outputs, feeds):
            calls.append(1)
            return [np.asarray(feeds["V"]) * 2]        # not attention
    monkeypatch.setattr(bench, "_onnx_attention", lambda *args, **kwargs: WrongSession())
    assert main(TINY_PREFILL) == 0
    out = capsys.readouterr().out
    header, rows = _prefill_table(out)
    assert "vs onnxrt" in header
    assert out.count("onnxruntime skipped (checked against fastattn before timing)") == 4
    assert all(row.split()[-1] == "-" for row in rows)
    assert len(calls) == 4


def test_no_timed_block_follows_a_blas_call_without_a_pause(monkeypatch):
    # OpenBLAS's workers busy-wait after a call: whoever is timed next, in a round
    # or in the first round after the warm-up, must not share the cores with them
    events = []
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    contenders = {name: (lambda name=name: events.append(("call", name)))
                  for name in ("fastattn", "torch", "sgemm")}
    bench._interleaved_medians(contenders, repeats=2, block_seconds=0.0)
    calls = [i for i, event in enumerate(events) if event[0] == "call"]
    for before, after in zip(calls, calls[1:]):
        # (sgemm's own next call may follow: its untimed call before its block)
        if (events[before][1] == "sgemm" and events[after][1] != "sgemm"
                and after == before + 1):
            raise AssertionError(f"{events[after][1]} ran right after sgemm: {events}")
    first_round = calls[3]
    assert any(event[0] == "sleep" for event in events[calls[2] + 1:first_round])


def test_each_block_of_short_calls_follows_an_untimed_call(monkeypatch):
    """After a rest a contender's own workers sleep and its first call pays their
    wake-up: each timed block of short calls follows one untimed call, and a call
    as long as half a second (its wake-up lost in it) is not repeated so."""
    calls, clock = [], [0.0]
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def contender(name, seconds):
        def call():
            calls.append(name)
            clock[0] += seconds
        return call
    timings = bench._interleaved_medians({"short": contender("short", 0.01),
                                          "long": contender("long", 0.6)}, repeats=3)
    # warm-up: short twice (a short first call is timed again), long once; then each
    # round: short's untimed call and its block of 5, long's block of 1
    assert calls == ["short"] * 2 + ["long"] + (["short"] * 6 + ["long"]) * 3
    assert timings["short"] == pytest.approx(0.01) and timings["long"] == pytest.approx(0.6)


def test_decode_rows_against_the_read_timed_in_their_rounds(monkeypatch):
    """Each decode row's share of the bandwidth is its own rate over the streaming
    read timed in the same rounds, not over the one figure printed for the section."""
    reads = []
    real_call = bench.StreamingRead.__call__

    def counted(self):
        reads.append(self.nbytes)
        real_call(self)

    monkeypatch.setattr(bench.StreamingRead, "__call__", counted)
    monkeypatch.setattr(bench, "_onnx_attention", lambda *args, **kwargs: None)
    bandwidth, rows = bench.run_decode(None, 1, 2, rows=[(1, 2, 1, 16, 64), (1, 4, 2, 8, 32)],
                                       dtypes=("float32",))
    assert len(rows) == 2 and bandwidth > 0
    for row in rows:
        assert row["read_gb_per_s"] > 0
        assert row["bandwidth_share"] == pytest.approx(row["gb_per_s"] / row["read_gb_per_s"])
    # the section's figure (1 + 5 calls), then per row a warm-up and >= 1 call a round
    assert len(reads) >= 6 + 2 * (1 + 2)


def test_streaming_read_lets_go_of_its_memory():
    with bench.StreamingRead(2, mebibytes=8) as read:
        read()
        assert read.nbytes == 8 * 2**20
    assert not hasattr(read, "data")
