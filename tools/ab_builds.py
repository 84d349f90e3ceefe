"""A/B two (or more) builds of fastattn's kernels in one process, on a noisy machine.

Build, save the build under a name, change the kernels, build again, save again, then
time the saved builds in alternation (each round runs every build once, the order
reversed every other round) and print the median of the per-round time ratios: a slow
spell of a shared machine then slows both sides of a ratio.

    python setup.py build_ext --inplace && python tools/ab_builds.py save /tmp/ab before
    ... edit fastattn/_kernels ...
    python setup.py build_ext --inplace && python tools/ab_builds.py save /tmp/ab after
    python tools/ab_builds.py backward /tmp/ab before,after --head-dim 128 --length 1024

`mha` times MultiHeadAttention's forward instead (self-attention, batch 4, embed_dim =
heads * head_dim, batch_first; `--weights` asks for the averaged weights too).
`decode` times attention_with_kvcache: one query row per head over a full cache of
`--length` keys (`--kv-heads` key/value heads for `--heads` query heads, the cache in
`--cache-dtype`; `--heads-inside`: a (B, S, H, D) cache passed transposed, each head's
rows H rows apart), and prints GB/s of cache read instead of GFLOP/s:

    FASTATTN_SIMD=avx2 python tools/ab_builds.py decode /tmp/ab before,after \
        --heads 32 --kv-heads 8 --length 32768 --cache-dtype float16

A saved build is a copy of the package directory (its compiled extension included)
renamed, so that both import side by side. Results are checked against the first
build's before timing.
"""
import argparse
import importlib
import pathlib
import re
import shutil
import statistics
import sys
import time

import numpy as np


def save(directory, name):
    source = pathlib.Path(__file__).resolve().parent.parent / "fastattn"
    target = pathlib.Path(directory) / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        path.write_text(re.sub(r"\bfastattn\b", name, path.read_text()))
    print(f"saved {source} as {target} (import {name})")


def run(kind, directory, names, head_dim, length, heads, threads, rounds, causal,
        weights=False, kv_heads=None, cache_dtype="float32", heads_inside=False):
    sys.path.insert(0, str(directory))
    builds = [importlib.import_module(name) for name in names]
    rng = np.random.default_rng(0)
    if kind == "decode":    # one query row per head, a full cache of `length` keys
        kv_heads = kv_heads or heads
        if cache_dtype == "bfloat16":
            import ml_dtypes    # registers the dtype
            cache_dtype = ml_dtypes.bfloat16
        q = rng.standard_normal((1, heads, 1, head_dim), dtype=np.float32)
        # --heads-inside: a (B, S, H, D) cache passed as (B, H, S, D), rows H apart
        cache_shape = (1, length, kv_heads, head_dim) if heads_inside else (1, kv_heads,
                                                                            length, head_dim)
        k, v = (rng.standard_normal(cache_shape, dtype=np.float32).astype(cache_dtype)
                for _ in range(2))
        if heads_inside:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    else:
        shape = (1, heads, length, head_dim)
        q, k, v, grad_out = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    if kind == "backward":
        out, lse = builds[0].scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                          return_lse=True)
    mha_batch, embed_dim = 4, heads * head_dim
    if kind == "mha":
        x = rng.standard_normal((mha_batch, length, embed_dim), dtype=np.float32)
        modules = {build: build.MultiHeadAttention(embed_dim, heads, batch_first=True, seed=0)
                   for build in builds}

    def call(build):
        if kind == "mha":
            return modules[build](x, x, x, need_weights=weights, is_causal=causal,
                                  attn_mask=None if not causal else
                                  np.triu(np.ones((length, length), bool), 1),
                                  num_threads=threads)
        if kind == "decode":
            return build.attention_with_kvcache(q, k, v, length, num_threads=threads)
        if kind == "forward":
            return build.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                      num_threads=threads)
        return build.scaled_dot_product_attention_backward(
            grad_out, q, k, v, out, lse, is_causal=causal, num_threads=threads)

    def results(build):    # the output, or the three gradients, or output and weights
        got = call(build)
        if kind == "mha":
            return [got[0]] if got[1] is None else list(got)
        return [got] if kind in ("forward", "decode") else list(got)

    expected = results(builds[0])
    for build in builds[1:]:
        for want, got in zip(expected, results(build)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    times = {build.__name__: [] for build in builds}
    for r in range(rounds):
        for build in builds if r % 2 == 0 else builds[::-1]:
            start = time.perf_counter()
            call(build)
            times[build.__name__].append(time.perf_counter() - start)
    flops = (10 if kind == "backward" else 4) * heads * length * length * head_dim
    flops /= 2 if causal else 1
    if kind == "mha":    # the attention's, and the four projections'
        flops = mha_batch * (flops + 8 * length * embed_dim * embed_dim)
    rate, unit = flops, "GFLOP/s"
    if kind == "decode":
        rate, unit = k.nbytes + v.nbytes, "GB/s"
    first = builds[0].__name__
    batch = f"N{mha_batch} E{embed_dim} H{heads}" if kind == "mha" else f"B1 H{heads}"
    if kind == "decode":
        batch += f"/{kv_heads} {np.dtype(cache_dtype).name} cache"
        batch += " (B, S, H, D)" if heads_inside else ""
    print(f"{kind}, {batch} L{length} D{head_dim}{' causal' if causal else ''}"
          f"{' with weights' if weights else ''}, {threads} thread(s), {rounds} rounds")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(times[first], ts))
        print(f"  {name:>12}: median {statistics.median(ts) * 1e3:8.2f} ms "
              f"({rate / statistics.median(ts) / 1e9:6.1f} {unit}), "
              f"speed vs {first}: {ratio:.3f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", help="copy the in-place build as an importable package")
    p.add_argument("directory")
    p.add_argument("name")
    for kind in ("forward", "backward", "mha", "decode"):
        p = sub.add_parser(kind, help=f"time the {kind} pass of saved builds, alternating")
        p.add_argument("directory")
        p.add_argument("names", help="comma-separated saved names; ratios are against the first")
        p.add_argument("--head-dim", type=int, default=128)
        p.add_argument("--length", type=int, default=1024)
        p.add_argument("--heads", type=int, default=8)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--rounds", type=int, default=21)
        p.add_argument("--causal", action="store_true")
        if kind == "mha":
            p.add_argument("--weights", action="store_true")
        if kind == "decode":
            p.add_argument("--kv-heads", type=int, default=None)
            p.add_argument("--cache-dtype", default="float32",
                           help="float32, float16, or bfloat16 (with ml_dtypes)")
            p.add_argument("--heads-inside", action="store_true",
                           help="a (B, S, H, D) cache passed as (B, H, S, D)")
    args = parser.parse_args()
    if args.command == "decode" and args.causal:
        parser.error("decode: one query row at the end of the cache is causal already")
    if args.command == "save":
        save(args.directory, args.name)
    else:
        run(args.command, args.directory, args.names.split(","), args.head_dim, args.length,
            args.heads, args.threads, args.rounds, args.causal,
            getattr(args, "weights", False), getattr(args, "kv_heads", None),
            getattr(args, "cache_dtype", "float32"), getattr(args, "heads_inside", False))


if __name__ == "__main__":
    main()
