"""`scalelab export hf` on a trained run: transformers loads it and agrees with scalelab."""

import argparse

import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.cli import export as export_cli
from scalelab.interop.hf import directory as hfc

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def cli(argv):
    parser = argparse.ArgumentParser()
    export_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_export_hf_of_a_run_loads_in_transformers_and_imports_back(tiny_run, tmp_path, capsys):
    from scalelab.infer.evaluate import load_model

    run_dir, _ = tiny_run
    out = tmp_path / "hf"
    assert cli(["export", "hf", str(run_dir), "--out", str(out)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--overwrite"):
        cli(["export", "hf", str(run_dir), "--out", str(out)])
    assert cli(["export", "hf", str(run_dir), "--out", str(out), "--overwrite"]) == 0

    fns, params, tokenizer, config = load_model(run_dir)
    text = "def main():\n    return 0\n"
    ids = tokenizer.encode(text)[None, :].astype(np.int64)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(torch.as_tensor(ids)).logits.numpy()
    ours = np.asarray(fns.apply(params, jnp.asarray(ids)), np.float32)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids[0].tolist()

    model_config, imported, imported_tokenizer = hfc.load_hf(out)
    assert imported_tokenizer.to_dict() == tokenizer.to_dict()
    assert model_config["vocab_multiple"] == config.model.vocab_multiple and model_config["vocab"] == fns.spec.vocab
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "tied_embeddings", "rope_theta", "norm_eps"):
        assert model_config[key] == getattr(config.model, key), key
    assert np.array_equal(imported["embed"], np.asarray(params["embed"]))
    assert np.array_equal(imported["blocks"]["1"]["attn"]["wq"], np.asarray(params["blocks"]["1"]["attn"]["wq"]))
