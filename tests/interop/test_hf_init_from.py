"""`init_from=hf:DIR`: a Llama model made by transformers fine-tunes in scalelab, and evaluates."""

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from scalelab.data.prepare import PrepareOptions, prepare  # noqa: E402
from scalelab.data.stdlib import source_files  # noqa: E402
from scalelab.infer.evaluate import evaluate  # noqa: E402
from scalelab.interop.hf.directory import export_hf  # noqa: E402
from scalelab.train.run import run  # noqa: E402
from scalelab.train.runlog import read_metrics  # noqa: E402
from tests.helpers import TINY, compose_config  # noqa: E402


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A random Llama (transformers) with scalelab's byte tokenizer, and a byte dataset."""
    from scalelab.data.tokenizer import ByteTokenizer
    from scalelab.interop.hf.convert import from_hf_state, model_config, model_spec

    root = tmp_path_factory.mktemp("hf")
    config = transformers.LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "llama")
    # add scalelab's byte tokenizer beside it (re-export through scalelab to write the tokenizer files)
    hf = json.loads((root / "llama" / "config.json").read_text())
    from safetensors.numpy import load_file
    params = from_hf_state(load_file(root / "llama" / "model.safetensors"), model_config(hf) | {"vocab": 264})
    export_hf(root / "model", model_spec(model_config(hf)), params, ByteTokenizer(), max_positions=64)
    texts = root / "texts"
    texts.mkdir()
    for i, f in enumerate(source_files()[:40]):
        (texts / f"{i}.txt").write_text(f.read_text(errors="replace"))
    prepare([str(texts)], root / "data", PrepareOptions(tokenizer="byte"))
    return root


def test_an_hf_llama_fine_tunes_in_scalelab_and_the_loss_falls(pretrained, tmp_path):
    cfg = compose_config(TINY + ["data=prepared", f"data.path={pretrained / 'data'}", "data.tokens=8192",
                                 f"init_from=hf:{pretrained / 'model'}", "optimizer.lr=3e-3"])
    summary = run(cfg, tmp_path / "ft")
    assert summary["status"] == "completed" and summary["start"] == "fine-tune"
    assert summary["config"]["model"]["n_kv_heads"] == 1  # the architecture came from config.json
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "ft")]
    assert losses[-1] < losses[0] - 0.5
    result = evaluate(f"hf:{pretrained / 'model'}", data=str(pretrained / "data"), max_tokens=4096)
    assert result["loss"] > summary["final_eval_loss"]  # the fine-tuned model beats the random start


def test_an_hf_config_that_does_not_map_is_refused_naming_the_field(pretrained, tmp_path):
    from scalelab.config import ConfigError
    from scalelab.train.build import build_run

    bad = tmp_path / "bad"
    bad.mkdir()
    hf = json.loads((pretrained / "model" / "config.json").read_text()) | {"hidden_act": "gelu"}
    (bad / "config.json").write_text(json.dumps(hf))
    cfg = compose_config(TINY + ["data=prepared", f"data.path={pretrained / 'data'}", f"init_from=hf:{bad}"])
    with pytest.raises(ConfigError, match="init_from.*hidden_act"):
        build_run(cfg, tmp_path / "never")
