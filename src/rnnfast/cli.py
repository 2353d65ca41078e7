"""The `rnnfast` command."""
import argparse
import sys

__all__ = ["main"]


def _demo(args):
    from .demo import run_demo

    if args.threads:
        from . import set_num_threads

        set_num_threads(args.threads)
    run_demo(batch=args.batch, repeats=args.repeats)
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="rnnfast",
        description="Fast CPU inference for GRU, LSTM and SimpleRNN models trained in Keras or PyTorch.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="run the seed's two models against the numpy reference",
                       description="Run the seed's GRU and bidirectional-GRU models on random "
                                   "weights; print agreement with the float64 numpy reference "
                                   "and throughput against it.")
    d.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    d.add_argument("--repeats", type=int, default=15, help="timed runs per model (default 15)")
    d.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    d.set_defaults(func=_demo)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
