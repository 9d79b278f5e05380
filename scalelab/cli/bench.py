"""`scalelab bench`: training-step speed against this machine's measured peak (see scalelab/bench/)."""

from __future__ import annotations

import sys

from scalelab.cli import common


def format_table(rows: list[dict]) -> str:
    head = f"{'shape':<14}{'N':>11}{'prec':>6}{'attention':>11}{'acc':>4}{'compile s':>10}{'step ms':>9}{'tok/s':>10}{'GFLOP/s':>9}{'MFU':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<14}{r['params']:>11,}{r['precision']:>6}{r['attention']:>11}{r['grad_accum']:>4}{r['compile_seconds']:>10.1f}"
            f"{r['step_seconds'] * 1e3:>9.1f}{r['tokens_per_second']:>10,.0f}"
            f"{r['model_flops_per_second'] / 1e9:>9.1f}{r['mfu']:>7.1%}"
        )
    return "\n".join(lines)


def main(args) -> int:
    return common.run_with_json_on_stdout(_bench, args)


def _bench(args) -> int:
    if args.suggest:
        from scalelab.bench.suggest import bench_suggest, format_suggest

        result = bench_suggest(args.suggest_seeds)
        print(format_suggest(result), flush=True)
        common.write_json(result, args.json, getattr(args, "json_stream", None))
        return 0
    if args.against:
        return _against(args)
    import jax

    from scalelab.bench.shapes import NAMED
    from scalelab.bench.step import (
        BenchShape,
        bench_compile_cache,
        bench_data,
        bench_overhead,
        bench_shape,
        default_shapes,
        moe_lines,
    )
    from scalelab.model import ladder
    from scalelab.runtime import hardware

    if args.sweep:
        from scalelab.bench.sweep import bench_sweep, format_sweep

        results = [bench_sweep(model, args.sweep_steps, args.sweep_runs, args.sweep_ways.split(","), args.precision)
                   for model in args.sweep.split(",")]
        for r in results:
            print(format_sweep(r), flush=True)
        common.write_json({"sweeps": results}, args.json, getattr(args, "json_stream", None))
        return 0
    shapes = default_shapes()
    if args.shapes:
        wanted = set(args.shapes.split(","))
        shapes = [s for s in [*NAMED.values(), *shapes] if s.name in wanted]
        shapes = list({s.name: s for s in shapes}.values()) + [
            BenchShape.from_ladder(n) for n in wanted if n in ladder.WIDTH_DEPTH and n not in {s.name for s in shapes}
        ]
    peak, method = hardware.peak_flops(args.precision)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; peak {peak / 1e9:,.1f} GFLOP/s ({method})")
    print("MFU = ledger FLOPs/token (6*(N_matmul + d*V) + 12*L*T*d_attn) x tokens/s / peak; "
          f"median of {args.steps} timed steps after warm-up\n")
    rows = []
    for shape in shapes:
        rows.append(bench_shape(shape, args.precision, args.grad_accum, args.steps))
        print(format_table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else format_table(rows), flush=True)
    for line in moe_lines(rows):
        print(line, flush=True)
    extras = {}
    if not args.no_extras:
        fastest = max(r["tokens_per_second"] for r in rows)
        extras["data"] = bench_data()
        ratio = extras["data"]["tokens_per_second"] / fastest
        print(f"\ndata pipeline: {extras['data']['tokens_per_second']:,.0f} tokens/s "
              f"= {ratio:.0f}x the fastest step above")
        extras["overhead"] = bench_overhead()
        best = extras["overhead"]["tokens_per_second"]
        print(f"logging every step + checkpoint.every=100: {extras['overhead']['overhead']:+.1%} step time "
              f"(p150k, seq 128, best of {len(extras['overhead']['rounds']['quiet'])} alternating runs: "
              + ", ".join(f"{name} {value:,.0f} tok/s" for name, value in best.items()) + ")")
        extras["compile_cache"] = bench_compile_cache()  # last: it points JAX's cache at a temporary dir
        print(f"compile + first step, reference shape: cold cache {extras['compile_cache']['cold_seconds']:.1f} s, "
              f"warm persistent cache {extras['compile_cache']['warm_seconds']:.1f} s")
    common.write_json({"peak_flops": peak, "peak_method": method, "results": rows, **extras}, args.json,
                      getattr(args, "json_stream", None))
    if args.json and not common.to_stdout(args.json):
        print(f"\nwrote {args.json}")
    return 0


def _against(args) -> int:
    from scalelab.bench import against

    if not against.torch_available():
        print(f"scalelab bench --against torch needs PyTorch, which is not installed here; {against.INSTALL_HINT}",
              file=sys.stderr)
        return 2
    if args.precision != "fp32":
        print("scalelab bench --against torch compares fp32 training steps only", file=sys.stderr)
        return 2
    names = args.shapes.split(",") if args.shapes else ["reference"]
    try:
        for name in names:
            against.by_name(name)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"scalelab vs {args.against}: {args.rounds} rounds per shape, each a fresh scalelab process then a "
          f"fresh torch process; median of {args.steps} timed steps after warm-up; a round is contaminated when other "
          f"processes used more than {against.quiet.CONTAMINATED_ABOVE:.0%} of the CPUs during either side "
          "(others = /proc/stat busy time minus the side's own)", flush=True)
    try:
        result = against.bench_against(names, args.rounds, args.steps, args.grad_accum,
                                       echo=lambda line: print(line, flush=True))
    except against.SideFailed as e:
        print(f"scalelab bench --against torch: {e}", file=sys.stderr)
        return 1
    common.write_json(result, args.json, getattr(args, "json_stream", None))
    if args.json and not common.to_stdout(args.json):
        print(f"\nwrote {args.json}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="training-step speed (tokens/s, MFU) against the measured peak")
    p.add_argument("--shapes", metavar="NAMES",
                   help="comma-separated: reference, p150k, p500k, p1m, p3m, p1m-seq1024, gpu-125m, or any ladder size")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32 (default) or bf16 compute (fp32 parameters and optimizer state)")
    p.add_argument("--grad-accum", type=int, default=0, help="microbatches per step; 0: auto, as in training")
    p.add_argument("--steps", type=int, default=20, help="timed steps per shape, after warm-up (default 20)")
    common.add_json(p, "the results")
    p.add_argument("--sweep", metavar="MODELS", help="instead: the sweep bench for these ladder sizes "
                   "(e.g. p15k,p50k): an 8-run grid packed vs in-process vs one process per run")
    p.add_argument("--sweep-steps", type=int, default=300, help="steps of each run of the sweep bench")
    p.add_argument("--sweep-runs", type=int, default=8, help="runs of the sweep bench's grid: 4 learning rates x "
                   "runs/4 seeds (default 8)")
    p.add_argument("--sweep-ways", default="packed,in-process,processes",
                   help="the ways the sweep bench times, packed among them (default: all three)")
    p.add_argument("--suggest", action="store_true", help="instead: the suggest bench: on a synthetic Chinchilla law "
                   "with noise, the target's interval after 3 rounds of `analyze suggest` vs a fixed IsoFLOP grid of "
                   "the same FLOPs (CPU only, about 40 s per seed)")
    p.add_argument("--suggest-seeds", type=int, default=5, metavar="K", help="noise seeds of the suggest bench (default 5)")
    p.add_argument("--against", choices=["torch"], help="instead: scalelab's training step against a PyTorch CPU "
                   "trainer of the same model (scalelab/bench/torch_peer.py), alternating fresh processes for "
                   "--rounds rounds, with the CPU load from other processes during each (default shape: reference; "
                   "needs pip install -e '.[bench]')")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the --against bench (default 3)")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the data-pipeline, compile-cache and logging/checkpoint overhead measurements")
    p.set_defaults(func=main)
