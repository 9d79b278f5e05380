"""`scalelab export hf RUN_OR_CHECKPOINT --out DIR`: a checkpoint as a Hugging Face Llama model.

The directory it writes (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
special_tokens_map.json) loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`, and gives the same logits as scalelab (see scalelab.interop.hf.convert).
`add_parser(subparsers)` registers the command; heavy imports happen inside it.
"""

from __future__ import annotations

from scalelab.cli import common


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="write a checkpoint in another framework's format")
    sub = export.add_subparsers(dest="export_command", required=True)
    p = sub.add_parser(
        "hf", help="a Hugging Face LlamaForCausalLM (MoE: MixtralForCausalLM) directory (config.json, "
                   "safetensors, tokenizer)",
        description="Write a run's newest checkpoint (or one checkpoint step dir) as a Hugging Face "
                    "LlamaForCausalLM directory (an MoE model: MixtralForCausalLM) that transformers loads "
                    "with from_pretrained.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run dir (newest checkpoint) or a step dir")
    common.add_out(p, "the directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace the model and tokenizer files already in DIR")
    p.set_defaults(func=export_hf_main)


def export_hf_main(args) -> int:
    from scalelab.infer.evaluate import load_model
    from scalelab.interop.hf.directory import export_hf

    model = load_model(args.checkpoint)
    written = export_hf(args.out, model.fns.spec, model.params, model.tokenizer,
                        max_positions=int(model.config.data.seq_len), overwrite=args.overwrite)
    spec = model.fns.spec
    print(f"wrote {args.out}: {', '.join(p.name for p in written)}")
    kind = (f"MixtralForCausalLM ({spec.shape.experts} experts, top {spec.shape.top_k})"
            if spec.shape.experts else "LlamaForCausalLM")
    print(f"  {kind}, {spec.n_layers} layers x d_model {spec.d_model}, vocab {spec.vocab} "
          f"({model.tokenizer.kind} tokenizer, {model.tokenizer.vocab_size} ids)")
    print(f"  load it with: transformers.AutoModelForCausalLM.from_pretrained({str(args.out)!r})")
    if spec.shape.experts and spec.moe_dispatch == "capacity":
        print(f"  note: trained with capacity dispatch (factor {spec.capacity_factor}); Mixtral computes every "
              "assignment, so its logits equal scalelab's only where this model drops none (moe_dropped/* in "
              "metrics.jsonl: how often it did in training)")
    return 0
