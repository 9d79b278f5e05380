"""The `scalelab data prepare`, `scalelab eval` and `scalelab generate` subcommands.

`add_parsers(subparsers)` registers them on the `scalelab` command's subparsers; each sets
`func(args) -> exit code`. Bad input raises ValueError / FileNotFoundError with a message meant
for the user (the `scalelab` entry point prints it as `error: ...` and exits 2). Heavy imports
(JAX, tokenizers) happen inside the commands, so `scalelab -h` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from scalelab.cli import common


def add_parsers(subparsers) -> None:
    _add_data(subparsers)
    _add_eval(subparsers)
    _add_generate(subparsers)


# ---- data prepare ---------------------------------------------------------------------------

def _add_data(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare datasets for data=prepared")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser(
        "prepare", help="clean, deduplicate, tokenize and split text into a dataset",
        description="Text files (one document each), directories, JSONL (--text-field) or Parquet "
                    "(--text-field column) in; a dataset for `data=prepared data.path=DIR` out.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or glob patterns")
    common.add_out(p, "the dataset directory to write")
    p.add_argument("--tokenizer", default="byte", metavar="byte|bpe|FILE",
                   help="byte (default), bpe (trained here), or a tokenizers tokenizer.json used as it is")
    p.add_argument("--eos-token", metavar="TOKEN",
                   help="with --tokenizer FILE: its end-of-document token (default: the file's tokenizer_config.json "
                        "eos_token, else a well-known one such as <|endoftext|> or </s>)")
    p.add_argument("--vocab-size", type=int, default=8192, metavar="N", help="BPE vocabulary size (default 8192)")
    p.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field / Parquet column (default text)")
    p.add_argument("--min-chars", type=int, default=1, metavar="N",
                   help="drop cleaned documents shorter than N characters (default 1: drop empty ones)")
    p.add_argument("--val-fraction", type=float, default=0.05, metavar="F", help="share of documents held out")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip and count unreadable records instead of stopping at the first")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="salts the train/val split (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.set_defaults(func=prepare_main)


def prepare_main(args) -> int:
    from scalelab.data.prepare import PrepareOptions, prepare

    options = PrepareOptions(
        tokenizer=args.tokenizer, eos_token=args.eos_token, vocab_size=args.vocab_size, text_field=args.text_field,
        min_chars=args.min_chars, val_fraction=args.val_fraction, skip_bad_records=args.skip_bad_records,
        seed=args.seed, overwrite=args.overwrite, progress=False if args.no_progress else None,
    )
    manifest = prepare(args.inputs, args.out, options)
    docs, tokens, bpt = manifest["documents"], manifest["tokens"], manifest["bytes_per_token"]
    print(f"wrote {args.out}")
    print(f"  documents  read {docs['read']:,}, kept {docs['kept']:,} (train {docs['train']:,}, val {docs['val']:,}); "
          f"dropped {docs['duplicates']:,} duplicates, {docs['too_short']:,} too short, "
          f"{docs['bad_records']:,} bad records")
    print(f"  tokens     train {tokens['train']:,}, val {tokens['val']:,} ({manifest['tokenizer_kind']}, "
          f"vocab {manifest['vocab_size']:,}, {bpt['all']:.3f} bytes/token)")
    print(f"  train on it with: {shlex.join(['scalelab-train', 'data=prepared', f'data.path={args.out}'])}")
    return 0


# ---- eval -----------------------------------------------------------------------------------

def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="loss, perplexity and bits per byte of a checkpoint; or its tasks")
    p.add_argument("checkpoint", nargs="?", metavar="RUN_OR_CHECKPOINT",
                   help="a run dir (newest checkpoint), a step dir or hf:DIR")
    p.add_argument("--data", metavar="DIR|stdlib", help="dataset to evaluate on (default: the run's own)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="only N tokens (whole windows, spread evenly over the split: the windows a run with train.eval_tokens=N evaluates on)")
    p.add_argument("--batch-size", type=int, metavar="B", help="windows per batch (default: the run's)")
    p.add_argument("--tasks", metavar="NAMES", help="instead: lm-evaluation-harness tasks, comma-separated "
                   "(the built-in group stdlib, its tasks, any task the harness knows; needs the tasks extra)")
    p.add_argument("--limit", type=float, metavar="N", help="with --tasks: the first N items of each task "
                   "(a fraction below 1)")
    p.add_argument("--include", action="append", default=[], metavar="DIR",
                   help="with --tasks: a directory of your own task YAMLs (repeatable)")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks --tasks can name, and exit")
    p.add_argument("--record", action="store_true", help="with --tasks: score the final checkpoint of the run, "
                   "or of every completed run under a sweep directory, and keep the scores in each run's "
                   "tasks.json, where collect and the report find them (runs already scored are skipped)")
    common.add_json(p, "the result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.set_defaults(func=eval_main)


def record_main(args) -> int:
    """`eval RUN_OR_SWEEP --tasks NAMES --record`: each completed run's final checkpoint scored and
    its scores kept in its tasks.json (built-in tasks need no harness)."""
    from scalelab.analysis.runs.collect import find_run_dirs
    from scalelab.infer.tasks import record_tasks

    if not args.checkpoint:
        raise SystemExit("error: --record needs a run or a sweep directory")
    runs = find_run_dirs(Path(args.checkpoint))
    if not runs:
        raise SystemExit(f"error: no runs under {args.checkpoint} (no summary.json at any depth)")
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results, problems = {}, 0
    for run_dir in runs:
        try:
            done = record_tasks(run_dir, args.tasks.split(","), limit, args.include)
        except ImportError as exc:
            raise SystemExit(f"error: tasks other than the built-in ones need the lm-evaluation-harness: "
                             f"pip install 'scalelab[tasks]' ({exc})") from None
        problems += done.problem
        results[str(run_dir)] = {"outcome": done.what, "scores": done.scores}
        if not common.to_stdout(args.json):
            accs = "  ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in done.scores.items() if k.endswith("/acc"))
            print(f"{run_dir.name}: {done.what}" + (f"  (acc: {accs})" if accs else ""))
    common.write_json(results, args.json)
    return 1 if problems else 0  # a completed run left unscored is named above


def tasks_main(args) -> int:
    if args.record:
        return record_main(args)
    try:
        from scalelab.tasks import harness
    except ImportError as exc:
        raise SystemExit(f"error: --tasks needs the lm-evaluation-harness: pip install 'scalelab[tasks]' ({exc})") from None
    if args.list_tasks:
        from scalelab.tasks import builtin

        for name, (description, _) in builtin.TASKS.items():
            print(f"{name:<16} built-in ({builtin.GROUP}): {description}, {len(builtin.task_items(name))} items, chance 25%")
        names = harness.list_tasks(args.include)
        print(f"and {len(names)} task and group names of the harness (with --include's): "
              + ", ".join(n for n in names if not n.startswith(builtin.GROUP))[:2000])
        return 0
    if not args.checkpoint:
        raise SystemExit("error: name a run, a checkpoint or hf:DIR to evaluate")
    from scalelab.infer.load import load_model

    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    m = load_model(args.checkpoint)
    model = harness.TaskModel(m.fns, m.params, m.tokenizer, int(m.config.data.seq_len))
    results = harness.run_tasks(model, args.tasks.split(","), limit=limit, include=args.include)
    if not common.to_stdout(args.json):
        for task, metrics in results.items():
            shown = {k.split(",")[0]: v for k, v in metrics.items() if "," in k and "stderr" not in k}
            print(f"{task:<20} " + "  ".join(f"{k} {v:.4f} +- {metrics.get(k + '_stderr,none', float('nan')):.4f}"
                                               for k, v in shown.items() if isinstance(v, float)))
    common.write_json(results, args.json)
    return 0


def eval_main(args) -> int:
    from scalelab.infer.evaluate import evaluate, format_table

    if args.record and not args.tasks:
        raise SystemExit("error: --record goes with --tasks NAMES")
    if args.tasks or args.list_tasks:
        return tasks_main(args)
    if not args.checkpoint:
        raise SystemExit("error: name a run, a checkpoint or hf:DIR to evaluate")
    result = evaluate(args.checkpoint, data=args.data, split=args.split, max_tokens=args.max_tokens,
                      batch_size=args.batch_size, progress=not args.no_progress)
    if not common.to_stdout(args.json):
        print(format_table(result))
    common.write_json(result, args.json)
    return 0


# ---- generate -------------------------------------------------------------------------------

def _add_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="sample text from a checkpoint (KV cache, batched prompts)")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run dir (newest checkpoint) or a step dir")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", metavar="F", help="more prompts, one per line")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="default: fill the model's context after the longest prompt, at most 256")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1: off)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="cut each completion at the first of these strings (repeatable)")
    common.add_json(p, "prompts, completions and speed")
    p.set_defaults(func=generate_main)


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file: no such file: {path}")
        prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give at least one prompt: --prompt TEXT or --prompts-file F")
    return prompts


def generate_main(args) -> int:
    from scalelab.infer.evaluate import load_model
    from scalelab.infer.generate import Sampling, complete

    prompts = read_prompts(args)
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    sampling.check()
    model = load_model(args.checkpoint)
    completions, result = complete(model, prompts, max_new_tokens=args.max_new_tokens, sampling=sampling,
                                   seed=args.seed, stops=args.stop)
    speed = (f"{result.new_tokens} new tokens in {result.seconds:.2f} s: {result.tokens_per_second:,.0f} tokens/s "
             f"(batch of {len(prompts)}; compiling took {result.compile_seconds:.1f} s)")
    if not common.to_stdout(args.json):
        for i, c in enumerate(completions, start=1):
            print(f"--- prompt {i} ({len(c.tokens)} tokens, stopped by {c.stopped})")
            print(c.prompt + c.text)
        print(speed, file=sys.stderr)
    common.write_json({"completions": [vars(c) for c in completions], "new_tokens": result.new_tokens,
                 "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
                 "compile_seconds": result.compile_seconds}, args.json)
    return 0


def main(argv=None) -> int:
    """Standalone entry (`python -m scalelab.cli.workflow ...`) until `scalelab` registers these."""
    parser = argparse.ArgumentParser(prog="scalelab")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
