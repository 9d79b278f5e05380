"""`scalelab mup coord-check`: activation size against width under each parametrization
(scalelab/bench/coord_check.py)."""

from __future__ import annotations

from scalelab.cli import common


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def format_slopes(result: dict) -> str:
    layers = list(next(iter(result["slopes"].values())))
    head = f"{'parametrization':<16}" + "".join(f"{layer:>11}" for layer in layers)
    lines = [f"slope of log RMS against log width after {result['steps'][-1]} steps "
             "(0: width-independent)", head, "-" * len(head)]
    for name, slopes in result["slopes"].items():
        lines.append(f"{name:<16}" + "".join(f"{slopes[layer]:>+11.3f}" for layer in layers))
    return "\n".join(lines)


def coord_check_main(args) -> int:
    return common.run_with_json_on_stdout(_coord_check, args)


def _coord_check(args) -> int:
    from pathlib import Path

    from scalelab.analysis import save_figure as save
    from scalelab.bench.coord_check import Settings, coord_check, figure

    settings = Settings(widths=_ints(args.widths), parametrizations=tuple(args.parametrizations.split(",")),
                        steps=args.steps, n_layers=args.layers, n_heads=args.heads, batch_size=args.batch_size,
                        seq_len=args.seq_len, lr=args.lr, base_width=args.base_width, seed=args.seed)
    if min(settings.widths) <= 0 or any(w % settings.n_heads for w in settings.widths):
        raise ValueError(f"--widths: each must be a positive multiple of --heads={settings.n_heads}")
    unknown = set(settings.parametrizations) - {"standard", "mup"}
    if unknown:
        raise ValueError(f"--parametrizations: unknown {', '.join(sorted(unknown))} (standard, mup)")
    result = coord_check(settings, progress=lambda line: print(line, flush=True))
    out = Path(args.out)
    common.write_json(result, str(out / "coord_check.json"))
    paths = save(figure(result), out, "coord_check")
    print("\n" + format_slopes(result))
    print(f"\nwrote {out / 'coord_check.json'} and {paths[0]} (.svg, .pdf)")
    common.write_json(result, args.json, getattr(args, "json_stream", None))
    return 0


def add_parser(subparsers) -> None:
    mup = subparsers.add_parser("mup", help="maximal update parametrization tools: the coordinate check")
    sub = mup.add_subparsers(dest="mup_command", required=True, metavar="COMMAND")
    p = sub.add_parser("coord-check", help="train a few steps at several widths; activation RMS against width "
                                           "(flat lines under mup), as JSON and a figure")
    p.add_argument("--widths", default="32,64,128,256", help="comma-separated d_model values (default 32,64,128,256)")
    p.add_argument("--parametrizations", default="standard,mup", help="comma-separated (default standard,mup)")
    p.add_argument("--steps", type=int, default=6, help="AdamW steps per model (default 6)")
    p.add_argument("--layers", type=int, default=2, help="n_layers (default 2)")
    p.add_argument("--heads", type=int, default=4, help="n_heads, fixed over widths (default 4)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--lr", type=float, default=1e-2, help="constant AdamW learning rate (default 1e-2)")
    p.add_argument("--base-width", type=int, default=32, help="model.mup_base_width (default 32)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed (default 0)")
    common.add_out(p, "folder for coord_check.json and coord_check.png/.svg/.pdf (default coord-check)",
                   required=False)
    p.set_defaults(out="coord-check")
    common.add_json(p, "the measured RMS values and slopes")
    p.set_defaults(func=coord_check_main)
