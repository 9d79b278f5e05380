import numpy as np
import pytest
from omegaconf import OmegaConf

from scalelab.data import pipeline
from scalelab.data.stdlib import is_validation, open_stdlib, source_files, stdlib_root
from scalelab.data.store import StoreBuilder, TokenStore
from scalelab.data.tokenizer import ByteTokenizer


def data_cfg(**kw):
    return OmegaConf.create({"source": "stdlib", "seq_len": 32, "tokens": 8 * 32 * 30, "prefetch": 2,
                             "val_fraction": 0.05, **kw})


@pytest.fixture(scope="module")
def store():
    return open_stdlib(0.05)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_stdlib_corpus_is_real_and_split_by_file(store):
    files = source_files()
    assert len(files) > 300
    assert not any("test" in f.parts for f in files)
    assert 8e6 < store.tokens("train") < 2e7 and store.tokens("val") > 1e5
    # the validation split holds exactly the files whose relative path hashes into it, whole
    root = stdlib_root()
    val_files = [f for f in files if is_validation(f.relative_to(root).as_posix(), 0.05)]
    assert 0 < len(val_files) < len(files) * 0.15
    val = store.manifest["splits"]["val"]
    assert val["documents"] == len(val_files)
    assert val["bytes"] == sum(len(f.read_bytes().decode("utf-8", errors="replace").encode()) for f in val_files)
    # byte tokenizer: a training window decodes back to Python source
    text = store.tokenizer.decode(pipeline.Windows(store.shards("train"), 256)[100])
    assert "def " in text or "import " in text or "return" in text


def test_same_seed_same_batches_other_seed_other_batches(store):
    cfg = data_cfg()
    a = take(pipeline.train_iterator(store, cfg, 8, seed=3, steps=30), 5)
    b = take(pipeline.train_iterator(store, cfg, 8, seed=3, steps=30), 5)
    c = take(pipeline.train_iterator(store, cfg, 8, seed=4, steps=30), 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (8, 33) and a[0].dtype == np.int32


def test_iterator_state_resumes_exactly(store):
    cfg = data_cfg()
    it = pipeline.train_iterator(store, cfg, 8, seed=0, steps=30)
    take(it, 7)
    state = it.get_state()
    rest = take(it, 5)
    resumed = pipeline.train_iterator(store, cfg, 8, seed=0, steps=30)
    resumed.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(rest, take(resumed, 5)))


def test_the_reader_without_threads_gives_grains_batches_and_state(store):
    """Packed groups read with `threads=False`: the same batches as Grain's iterator, and each resumes
    from the other's state (a packed member's checkpoint resumes as a solo run, and back)."""
    cfg = data_cfg()
    grain_it = pipeline.train_iterator(store, cfg, 8, seed=2, steps=30)
    reader = pipeline.train_iterator(store, cfg, 8, seed=2, steps=30, threads=False)
    expected = take(grain_it, 6)
    np.testing.assert_array_equal(reader.take(6), np.stack(expected))
    assert reader.get_state() == grain_it.get_state()
    solo = pipeline.train_iterator(store, cfg, 8, seed=2, steps=30)
    solo.set_state(reader.get_state())
    again = pipeline.train_iterator(store, cfg, 8, seed=2, steps=30, threads=False)
    again.set_state(grain_it.get_state())
    np.testing.assert_array_equal(next(solo), next(again))
    assert len(take(again, 23)) == 23
    with pytest.raises(StopIteration):  # 30 steps: 6 + 1 + 23 read
        next(again)


def test_processes_read_disjoint_rows_of_the_same_global_batch(store):
    cfg = data_cfg()
    whole = take(pipeline.train_iterator(store, cfg, 8, seed=1, steps=30), 3)
    halves = [take(pipeline.train_iterator(store, cfg, 8, seed=1, steps=30, process_index=p, process_count=2), 3)
              for p in range(2)]
    for s in range(3):
        np.testing.assert_array_equal(np.concatenate([halves[0][s], halves[1][s]]), whole[s])


def test_windows_pack_documents_with_one_token_overlap(tmp_path):
    tok = ByteTokenizer()
    with StoreBuilder(tmp_path / "ds", tok) as b:
        for text in ["abcdefgh", "ijklmnop", "qrstuvwx"]:
            b.add("train", tok.encode(text), len(text))
        b.add("val", tok.encode("0123456789"), 10)
    store = TokenStore(tmp_path / "ds")
    w = pipeline.Windows(store.shards("train"), seq_len=4)
    assert len(w) == (27 - 1) // 4  # 3 documents + 3 separators = 27 tokens
    assert list(w[0]) == list(b"abcde") and list(w[1])[0] == ord("e")  # next window starts at the last target
    assert tok.eos_id in w[2]


def test_more_tokens_than_corpus_repeats_epochs_in_new_orders(tmp_path):
    tok = ByteTokenizer()
    with StoreBuilder(tmp_path / "ds", tok) as b:
        text = "".join(f"{i:07d}|" for i in range(40))  # 40 distinct 8-byte chunks + separator
        b.add("train", tok.encode(text), len(text))
        b.add("val", tok.encode("y" * 200), 200)
    store = TokenStore(tmp_path / "ds")
    cfg = data_cfg(source="prepared", path=str(tmp_path / "ds"), seq_len=8, tokens=4 * 8 * 30)
    plan = pipeline.plan(store, cfg, 4)
    assert plan.train_windows == 40 and plan.repeats_data and plan.epochs == 3
    batches = take(pipeline.train_iterator(store, cfg, 4, seed=0, steps=plan.steps), plan.steps)
    epochs = [np.concatenate(batches[e * 10:(e + 1) * 10]) for e in range(3)]
    for e in epochs:  # every window exactly once per epoch
        assert sorted(bytes(w[:8].astype(np.uint8)) for w in e) == [f"{i:07d}|".encode() for i in range(40)]
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    # the packed groups' reader gathers the same windows in the same order, across epochs and processes
    for process in range(2):
        rows = pipeline.train_iterator(store, cfg, 4, 0, plan.steps, process, 2)
        gathered = pipeline.train_iterator(store, cfg, 4, 0, plan.steps, process, 2, threads=False)
        np.testing.assert_array_equal(gathered.take(plan.steps), np.stack(take(rows, plan.steps)))


def test_a_missing_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="scalelab data prepare"):
        TokenStore(tmp_path / "nowhere")
