"""Decoding's share of the memory's rate, round by round, on a machine whose memory
changes its rate from minute to minute.

Each round times the bench's streaming read (`fastattn.bench.read_bandwidth`),
then a block of decoding calls (`attention_with_kvcache`, one new token over a full
float32 cache), and prints both rates and their ratio; the end prints the median
ratio of the rounds whose read was below and at or above --fast GB/s:

    python tools/decode_vs_read.py --rounds 16 --threads 2
"""
import argparse
import statistics
import time

import numpy as np

import fastattn
from fastattn.bench import read_bandwidth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads", type=int, default=32, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--length", type=int, default=32768, help="cached keys")
    parser.add_argument("--calls", type=int, default=9, help="decoding calls a round")
    parser.add_argument("--fast", type=float, default=45.0,
                        help="GB/s of the read that splits the rounds in two")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (1, args.kv_heads, args.length, args.head_dim)
    key_cache = rng.standard_normal(shape, dtype=np.float32)
    value_cache = rng.standard_normal(shape, dtype=np.float32)
    query = rng.standard_normal((1, args.heads, 1, args.head_dim), dtype=np.float32)
    cache_bytes = key_cache.nbytes + value_cache.nbytes

    def decode():
        fastattn.attention_with_kvcache(query, key_cache, value_cache, args.length,
                                        num_threads=args.threads)

    for _ in range(3):
        decode()
    shares = {"slow": [], "fast": []}
    for round_ in range(args.rounds):
        read = read_bandwidth(args.threads) / 1e9
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            decode()
            times.append(time.perf_counter() - start)
        rate = cache_bytes / statistics.median(times) / 1e9
        shares["fast" if read >= args.fast else "slow"].append(rate / read)
        print(f"round {round_:2d}: read {read:5.1f} GB/s, decoding {rate:5.1f} GB/s = "
              f"{100 * rate / read:4.0f}%", flush=True)
    for name, values in shares.items():
        if values:
            print(f"read {'<' if name == 'slow' else '>='} {args.fast:g} GB/s: "
                  f"{len(values)} rounds, decoding at {100 * min(values):.0f}–"
                  f"{100 * max(values):.0f}% of it, median "
                  f"{100 * statistics.median(values):.0f}%")


if __name__ == "__main__":
    main()
