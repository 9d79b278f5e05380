"""Task evaluation: the built-in `stdlib` tasks are made deterministically from the corpus, the
harness adapter's log-likelihoods equal scalelab's own next-token computation, and a task defined
locally (a task YAML over a local JSONL file) runs through the lm-evaluation-harness offline."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from scalelab.infer.load import load_model
from scalelab.model.loss import token_nll
from scalelab.tasks import builtin, scoring
from scalelab.train.build import build_run
from scalelab.train.run import fit
from tests.helpers import TINY, compose_config

lm_eval = pytest.importorskip("lm_eval", reason="the tasks extra (lm-evaluation-harness) is not installed")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tasks") / "run"
    fit(build_run(compose_config(TINY), run_dir, jax.local_devices()[:1]))
    return run_dir


@pytest.fixture(scope="module")
def model(run_dir):
    return load_model(run_dir)


def task_model(model):
    from scalelab.tasks.harness import TaskModel

    return TaskModel(model.fns, model.params, model.tokenizer, int(model.config.data.seq_len))


LOCAL_ROWS = [{"q": "x = (1", "choices": [")", "]", "}", ">"], "gold": 0},
              {"q": "y = [2", "choices": [")", "]", "}", ">"], "gold": 1},
              {"q": "z = {3", "choices": [")", "]", "}", ">"], "gold": 2}]


def write_local_task(directory) -> None:
    """A harness task of our own: a task YAML over a local JSONL file (no network)."""
    (directory / "local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOCAL_ROWS))
    (directory / "local.yaml").write_text(
        "task: local_brackets\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(directory / 'local.jsonl'))}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: choices\n"
        "doc_to_target: gold\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def local_items(rows=LOCAL_ROWS):
    return [{"context": r["q"], "choices": r["choices"], "answer": r["gold"]} for r in rows]


def request(*args):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=args, idx=0)


def own_logprob(model, context: str, continuation: str) -> float:
    """log p(continuation | context) by the training loss itself, over the whole window."""
    tok = model.tokenizer
    head = tok.encode(context) if context else np.array([tok.eos_id])
    ids = np.concatenate([head, tok.encode(continuation)]).astype(np.int32)[None]
    nll = np.asarray(token_nll(model.fns, model.params, ids))[0]
    return -float(nll[-len(continuation.encode()):].sum())


def test_the_builtin_tasks_are_deterministic_and_well_formed():
    hashes = {name: builtin.items_hash(name) for name in builtin.TASKS}
    builtin.task_items.cache_clear()
    builtin.validation_texts.cache_clear()
    assert {name: builtin.items_hash(name) for name in builtin.TASKS} == hashes  # made again: the same items
    for name in builtin.TASKS:
        items = builtin.task_items(name)
        assert 50 <= len(items) <= builtin.ITEMS, (name, len(items))
        for it in items:
            assert len(set(it["choices"])) == builtin.CHOICES and 0 <= it["answer"] < builtin.CHOICES
            assert it["context"] and len(it["context"]) <= builtin.CONTEXT_CHARS
        answers = np.bincount([it["answer"] for it in items], minlength=4) / len(items)
        assert answers.max() < 0.4, (name, answers)  # the right choice is not always in one place
    assert builtin.expand(["stdlib", "stdlib_close"]) == list(builtin.TASKS)


def test_the_adapters_loglikelihoods_equal_the_training_losss(model):
    from scalelab.tasks.harness import ScalelabLM

    lm = ScalelabLM(task_model(model))
    pairs = [("def f(x):\n    return", " x + 1\n"), ("import ", "os"), ("", "print('hi')"), ("a = [1, 2", "])")]
    got = lm.loglikelihood([request(c, x) for c, x in pairs])
    for (context, continuation), (logprob, _) in zip(pairs, got, strict=True):
        assert logprob == pytest.approx(own_logprob(model, context, continuation), rel=1e-5, abs=1e-5)
    # a context longer than the window is cut on the left, as the harness's own models do
    long_context = "x = 1\n" * 40
    (cut, _), = lm.loglikelihood([request(long_context, "y")])
    window = int(model.config.data.seq_len)
    assert cut == pytest.approx(own_logprob(model, long_context[-window:], "y"), rel=1e-5)
    # a rolling log-likelihood of a string within one window is its log-likelihood after end-of-text
    text = "for i in range(3):\n"
    (rolling,) = lm.loglikelihood_rolling([request(text)])
    assert rolling == pytest.approx(own_logprob(model, "", text), rel=1e-5)
    # greedy generation goes through the cached decoder, as `scalelab generate` does
    from scalelab.infer.generate import complete

    (generated,) = lm.generate_until([request("def ", {"until": ["\n"], "max_gen_toks": 8})])
    assert generated == complete(model, ["def "], max_new_tokens=8, stops=["\n"])[0][0].text


def test_score_choices_counts_right_answers_and_bits_per_byte(model):
    items = list(builtin.task_items("stdlib_keyword")[:12])
    result = scoring.score_choices(model.fns, model.params, model.tokenizer, items, int(model.config.data.seq_len))
    window = int(model.config.data.seq_len)
    logprobs = [[own_logprob(model, it["context"][-(window + 1 - len(c.encode())):], c) for c in it["choices"]]
                for it in items]
    assert result["acc"] == pytest.approx(np.mean([np.argmax(lp) == it["answer"] for lp, it in zip(logprobs, items)]))
    bits = sum(-lp[it["answer"]] / math.log(2) for lp, it in zip(logprobs, items))
    assert result["bpb"] == pytest.approx(bits / sum(len(it["choices"][it["answer"]].encode()) for it in items), rel=1e-4)


def test_a_local_harness_task_runs_end_to_end_offline(model, tmp_path):
    from scalelab.tasks.harness import run_tasks

    write_local_task(tmp_path)
    results = run_tasks(task_model(model), ["local_brackets", "stdlib_close"], limit=8, include=[str(tmp_path)],
                        bootstrap_iters=10)
    assert results["local_brackets"]["sample_len"] == 3 and 0 <= results["local_brackets"]["acc,none"] <= 1
    assert results["stdlib_close"]["sample_len"] == 8
    # the harness's accuracy is scalelab's own over the same items
    mine = scoring.score_choices(model.fns, model.params, model.tokenizer, local_items(),
                                 int(model.config.data.seq_len))
    assert results["local_brackets"]["acc,none"] == pytest.approx(mine["acc"])


def test_eval_tasks_on_the_command_line_writes_the_harness_results(run_dir, model, tmp_path):
    from scalelab.cli import main as cli

    out = tmp_path / "tasks.json"
    assert cli.main(["eval", str(run_dir), "--tasks", "stdlib_keyword", "--limit", "6", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["stdlib_keyword"]
    mine = scoring.score_choices(model.fns, model.params, model.tokenizer, builtin.task_items("stdlib_keyword")[:6],
                                 int(model.config.data.seq_len))
    assert result["acc,none"] == pytest.approx(mine["acc"])


def test_a_harness_task_in_the_loop_records_accuracy_and_bits_per_byte(tmp_path):
    """A task of the harness (here a local one) named in train.eval_tasks is scored at evaluations
    and at the end; its bits per byte come from the harness's samples and equal scalelab's scorer."""
    from scalelab.train.runlog import read_metrics, read_summary

    write_local_task(tmp_path)
    run_dir = tmp_path / "run"
    fit(build_run(compose_config([*TINY, "train.eval_tasks=[local_brackets]", "train.eval_every=6",
                                  "train.eval_tasks_limit=2", f"train.eval_tasks_include=[{tmp_path}]"]), run_dir,
                  jax.local_devices()[:1]))
    evaluated = [r for r in read_metrics(run_dir) if "eval_loss" in r]
    keys = {f"task/local_brackets/{m}" for m in ("acc", "acc_norm", "bpb", "items")}
    assert [r["step"] for r in evaluated] == [6, 12] and all(keys <= set(r) for r in evaluated)
    summary = read_summary(run_dir)
    assert summary["task/local_brackets/items"] == 2  # train.eval_tasks_limit
    final = load_model(run_dir)
    mine = scoring.score_choices(final.fns, final.params, final.tokenizer, local_items(LOCAL_ROWS[:2]), 32)
    assert summary["task/local_brackets/acc"] == pytest.approx(mine["acc"])
    assert summary["task/local_brackets/acc_norm"] == pytest.approx(mine["acc_norm"])
    assert summary["task/local_brackets/bpb"] == pytest.approx(mine["bpb"], rel=1e-5)


def test_tasks_in_the_loop_reach_metrics_summary_and_collect_and_packed_members_match(tmp_path):
    from scalelab.analysis import collect
    from scalelab.sweep.packed import Job, run_jobs
    from scalelab.train.runlog import read_metrics, read_summary

    overrides = [*TINY, "train.eval_tasks=[stdlib]", "train.eval_every=6"]
    solo = tmp_path / "sweep" / "solo"
    fit(build_run(compose_config(overrides), solo, jax.local_devices()[:1]))
    evaluated = [r for r in read_metrics(solo) if "eval_loss" in r]
    assert [r["step"] for r in evaluated] == [6, 12]
    keys = {f"task/{t}/{m}" for t in builtin.TASKS for m in ("acc", "acc_norm", "bpb")}
    assert all(keys <= set(r) for r in evaluated)
    summary = read_summary(solo)
    assert {k: summary[k] for k in keys} == {k: evaluated[-1][k] for k in keys}
    assert summary["task/stdlib_ident/items"] == len(builtin.task_items("stdlib_ident"))
    # the loop's numbers are the scorer's on the final parameters
    final = load_model(solo)
    again = scoring.score_choices(final.fns, final.params, final.tokenizer, builtin.task_items("stdlib_ident"), 32)
    assert summary["task/stdlib_ident/acc"] == pytest.approx(again["acc"])
    assert summary["task/stdlib_ident/bpb"] == pytest.approx(again["bpb"], rel=1e-5)

    jobs = [Job(cfg=compose_config([*overrides, f"train.seed={k}"]), run_dir=tmp_path / "sweep" / f"m{k}")
            for k in (0, 1)]
    run_jobs(jobs, max_members=2)
    assert all(j.error is None for j in jobs)
    member = read_summary(tmp_path / "sweep" / "m0")
    assert member["task/stdlib_ident/acc"] == pytest.approx(summary["task/stdlib_ident/acc"])
    table = collect([tmp_path / "sweep"])
    assert keys <= set(table.columns) and table["task/stdlib_close/acc"].notna().all()


def test_an_unknown_eval_task_fails_before_compilation_naming_the_key(tmp_path):
    from scalelab.config import ConfigError

    with pytest.raises(ConfigError, match="train.eval_tasks") as exc:
        build_run(compose_config([*TINY, "train.eval_tasks=[stdlib,no_such_task]"]), tmp_path / "run")
    assert "no_such_task" in str(exc.value) and "scalelab eval --list-tasks" in str(exc.value)
    assert not (tmp_path / "run").exists()  # nothing left behind
    with pytest.raises(ConfigError, match="train.eval_tasks_limit"):
        build_run(compose_config([*TINY, "train.eval_tasks=[stdlib]", "train.eval_tasks_limit=-1"]), tmp_path / "run")


def test_record_scores_finished_runs_as_their_loop_would_have_without_training_them_again(run_dir, tmp_path):
    """`scalelab eval SWEEP --tasks stdlib --record` scores each completed run's final checkpoint with
    the loop's computation: the same numbers a run trained with train.eval_tasks=[stdlib] wrote in its
    summary, kept in tasks.json (the summary untouched) and read by collect; a second call scores
    nothing; a run that did not complete is skipped."""
    import shutil

    from scalelab.analysis import AnalysisWarning, collect
    from scalelab.cli import main as cli
    from scalelab.train.runlog import read_summary

    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "plain")  # trained without tasks
    (sweep / "killed").mkdir()
    (sweep / "killed" / "summary.json").write_text(json.dumps({"status": "failed"}))
    looped = tmp_path / "looped"
    fit(build_run(compose_config([*TINY, "train.eval_tasks=[stdlib]"]), looped, jax.local_devices()[:1]))
    keys = {f"task/{t}/{m}" for t in builtin.TASKS for m in ("acc", "acc_norm", "bpb", "items")}
    expected = {k: read_summary(looped)[k] for k in keys}

    summary_bytes = (sweep / "plain" / "summary.json").read_bytes()
    out = tmp_path / "record.json"
    assert cli.main(["eval", str(sweep), "--tasks", "stdlib", "--record", "--json", str(out)]) == 0
    outcomes = json.loads(out.read_text())
    assert outcomes[str(sweep / "killed")]["outcome"].startswith("skipped (failed")
    assert outcomes[str(sweep / "plain")]["scores"] == expected
    recorded = json.loads((sweep / "plain" / "tasks.json").read_text())
    assert recorded["step"] == read_summary(sweep / "plain")["steps"] and set(recorded["tasks"]) == set(builtin.TASKS)
    assert (sweep / "plain" / "summary.json").read_bytes() == summary_bytes
    with pytest.warns(AnalysisWarning, match="excluded 1 of 2 runs"):  # the failed one
        row = collect([sweep]).set_index("run_dir").loc[str(sweep / "plain")]
    assert {k: row[k] for k in keys} == expected

    stamp = (sweep / "plain" / "tasks.json").stat().st_mtime_ns
    assert cli.main(["eval", str(sweep / "plain"), "--tasks", "stdlib_ident", "--record", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[str(sweep / "plain")]["outcome"] == "already scored"
    assert (sweep / "plain" / "tasks.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="--record goes with --tasks"):
        cli.main(["eval", str(sweep), "--record"])
    # a completed run whose newest checkpoint is not its final step is named, unscored, exit code 1
    odd = tmp_path / "odd" / "run"
    shutil.copytree(run_dir, odd)
    summary = read_summary(odd)
    (odd / "summary.json").write_text(json.dumps(summary | {"steps": summary["steps"] + 1}))
    assert cli.main(["eval", str(odd.parent), "--tasks", "stdlib", "--record", "--json", str(out)]) == 1
    assert "newest checkpoint is step" in json.loads(out.read_text())[str(odd)]["outcome"]
    assert not (odd / "tasks.json").exists()
