"""``python -m fastattn demo`` (fastattn/demo.py) and ``python -m fastattn bench``
(fastattn/bench.py; with ``--dask``, fastattn/dask_bench.py)."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastattn")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the blog's example, end to end")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the random embeddings (with --train, of the starting model)")
    demo.add_argument("--plot", metavar="FILE.png", help="draw an attention heatmap per sentence"
                      " (with --train, the loss curve too)")
    demo.add_argument("--train", action="store_true",
                      help="train the blog's model (embeddings, one causal attention layer) on"
                      " its sentences until it predicts every next word")
    bench = commands.add_parser("bench", help="time fastattn against its peers")
    bench.add_argument("--lengths", type=int, nargs="+",
                       default=[256, 512, 1024, 2048, 4096, 8192], help="sequence lengths L = S")
    bench.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    bench.add_argument("--heads", type=int, default=8)
    bench.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per shape (median)")
    bench.add_argument("--threads", type=int, default=None, help="default: OpenMP's")
    bench.add_argument("--numpy-max-length", type=int, default=8192,
                       help="longest L for the materialised NumPy reference")
    bench.add_argument("--jax-max-length", type=int, default=8192,
                       help="longest L for JAX (when installed; it materialises the scores)")
    bench.add_argument("--batch-row", type=int, nargs=4, metavar=("B", "H", "L", "D"),
                       default=[32, 8, 128, 64], help="a batched row after the L sweep")
    bench.add_argument("--no-batch-row", action="store_true", help="leave the batched row out")
    bench.add_argument("--memory-length", type=int, default=16384,
                       help="L for the peak-memory measurement (0 to skip)")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="draw time against L, log-log, with fitted slopes")
    bench.add_argument("--window-lengths", type=int, nargs="+",
                       default=[1024, 2048, 4096, 8192, 16384, 32768, 65536],
                       help="L for the sliding-window section")
    bench.add_argument("--window-mask-max-length", type=int, default=8192,
                       help="longest L at which the window is also run as a bool mask")
    bench.add_argument("--no-window", action="store_true", help="skip the sliding-window section")
    bench.add_argument("--no-decode", action="store_true", help="skip the KV-cache decode section")
    bench.add_argument("--decode-max-length", type=int, default=32768,
                       help="longest cache in the decode section")
    bench.add_argument("--no-mha", action="store_true", help="skip MultiHeadAttention")
    bench.add_argument("--no-train", action="store_true",
                       help="skip training's forward + backward (fastattn.torch against torch)")
    bench.add_argument("--train-lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096],
                       help="L for the training section")
    bench.add_argument("--train-memory-length", type=int, default=16384,
                       help="L for the training section's peak-memory measurement (0 to skip)")
    bench.add_argument("--no-blog", action="store_true", help="skip the blog's functions")
    bench.add_argument("--quick", action="store_true", help="L up to 1024, 3 repeats")
    bench.add_argument("--dask", action="store_true",
                       help="fastattn.dask on local worker processes instead (fastattn/dask_bench.py)")
    bench.add_argument("--dask-batch", type=int, default=8, help="B of the --dask throughput run")
    bench.add_argument("--dask-length", type=int, default=4096, help="L of the throughput run")
    bench.add_argument("--dask-long-length", type=int, default=65536,
                       help="L of the --dask long causal sequence (0 to skip)")
    bench.add_argument("--dask-head-dim", type=int, default=64)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from fastattn import demo as demo_module
        return demo_module.run(args)
    if args.command == "bench" and args.dask:
        from fastattn import dask_bench
        if args.quick:
            args.dask_length, args.repeats = min(args.dask_length, 1024), 3
            args.dask_long_length = min(args.dask_long_length, 8192)
        return dask_bench.run(args)
    if args.command == "bench":
        from fastattn import bench as bench_module
        if args.no_batch_row:
            args.batch_row = None
        if args.quick:
            args.lengths = [n for n in args.lengths if n <= 1024]
            args.repeats = 3
            args.memory_length = min(args.memory_length, 4096)
            args.window_lengths = [n for n in args.window_lengths if n <= 8192]
            args.decode_max_length = min(args.decode_max_length, 4096)
            args.train_lengths = [n for n in args.train_lengths if n <= 1024]
            args.train_memory_length = min(args.train_memory_length, 4096)
        return bench_module.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
