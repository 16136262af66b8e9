import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm import data, data_builder
from lm.data import DataCfg, PackedWindows
from lm.sharding import ConfigError
from tokenization.bytes import EOS_ID, PAD_ID, ByteTokenizer

TXT_DOCS = ["In the beginning was the word.\nAnd a second line.", "Second paragraph é ü.",
            "Third paragraph\n  indented line."]
JSONL_DOCS = ["json one", "json two {braces}", "json three\nwith newline"]
PARQUET_DOCS = ["parquet alpha", "parquet beta", "parquet gamma", "parquet delta"]


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("\n\n".join(TXT_DOCS) + "\n\n\n", encoding="utf-8")
    (src / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i})
                                           for i, t in enumerate(JSONL_DOCS)) + "\n\n")
    pq.write_table(pa.table({"text": PARQUET_DOCS, "n": list(range(4))}), src / "c.parquet")
    return DataCfg(source="files", paths=(str(src / "*"),), data_dir=str(tmp_path / "cache"),
                   eval_fraction=0.3)


def split_docs(cfg) -> dict[str, list[str]]:
    """Decode every split back into its documents (records concatenate; <eos> ends a doc)."""
    out = {}
    for split in ("train", "validation"):
        src, lengths = data.split_sources(cfg)[split]
        stream = np.concatenate([src[i]["tokens"] for i in range(len(src))])
        assert stream.dtype == np.int32 and len(stream) == lengths.sum()
        cuts = np.flatnonzero(stream == EOS_ID)
        assert cuts[-1] == len(stream) - 1
        out[split] = [ByteTokenizer().decode(d) for d in np.split(stream, cuts + 1)[:-1]]
    return out


def test_prepare_round_trips_all_formats_with_disjoint_split(corpus):
    docs = split_docs(corpus)
    assert sorted(docs["train"] + docs["validation"]) == sorted(TXT_DOCS + JSONL_DOCS
                                                                + PARQUET_DOCS)
    assert docs["train"] and docs["validation"]
    assert not set(docs["train"]) & set(docs["validation"])


def test_split_is_deterministic_and_holds_out_at_least_one(corpus, tmp_path):
    other = DataCfg(**{**corpus.__dict__, "data_dir": str(tmp_path / "cache2")})
    assert split_docs(corpus) == split_docs(other)
    tiny = DataCfg(**{**corpus.__dict__, "eval_fraction": 1e-9})
    assert len(split_docs(tiny)["validation"]) == 1


def test_cache_reuse_and_reprepare_on_change(corpus, tmp_path, monkeypatch):
    first = data.split_sources(corpus)["fingerprint"]

    def boom(*a, **k):
        raise AssertionError("prepared twice")
    with monkeypatch.context() as m:  # a cached dataset reads no document and builds nothing
        m.setattr(data_builder, "iter_documents", boom)
        m.setattr(data_builder.ByteDocs, "download_and_prepare", boom)
        assert data.split_sources(corpus)["fingerprint"] == first
    with open(tmp_path / "src" / "a.txt", "a", encoding="utf-8") as fh:
        fh.write("A brand new paragraph.\n")
    second = data.split_sources(corpus)["fingerprint"]
    assert second != first
    docs = split_docs(corpus)
    assert "A brand new paragraph." in docs["train"] + docs["validation"]
    assert sorted(os.listdir(tmp_path / "cache" / "byte_docs")) == sorted([first, second])


def test_failed_prepare_leaves_no_dataset(corpus, tmp_path, monkeypatch):
    def killed(self, validation):
        yield 0, {"tokens": np.array([1, 2], np.int32)}
        raise KeyboardInterrupt("killed mid-prepare")
    with monkeypatch.context() as m:
        m.setattr(data_builder.ByteDocs, "_generate_examples", killed)
        with pytest.raises(KeyboardInterrupt):
            data.split_sources(corpus)
    cache = tmp_path / "cache"
    assert not (cache / "byte_docs").exists() and not any(p.name.startswith(".tmp") for p in
                                                         cache.iterdir())
    (cache / ".tmp-leftover-of-a-kill").mkdir()  # what SIGKILL would leave: ignored
    assert len(split_docs(corpus)["train"]) > 0


def test_windows_cover_stream_exactly():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 256, n).astype(np.int32) for n in (5, 1, 17, 9)]
    win = PackedWindows(data_builder.InMemorySource(docs), np.array([5, 1, 17, 9]), seq_len=7)
    stream = np.concatenate(docs)
    assert len(win) == -(-(len(stream) - 1) // 7)
    rows = [win[i] for i in range(len(win))]
    inputs = np.concatenate([r["inputs"][r["mask"] > 0] for r in rows])
    targets = np.concatenate([r["targets"][r["mask"] > 0] for r in rows])
    np.testing.assert_array_equal(targets, stream[1:])  # every token is a target once
    np.testing.assert_array_equal(inputs, stream[:-1])
    last = rows[-1]
    assert (last["targets"][last["mask"] == 0] == PAD_ID).all()


def test_batches_shapes_dtypes_shift():
    cfg = DataCfg(source="synthetic", synthetic_docs=64)
    it = data.make_train_iter(cfg, batch_size=8, seq_len=32, seed=0)
    for _ in range(3):
        b = next(it)
        assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (8, 32)
        assert b["inputs"].dtype == b["targets"].dtype == np.int32
        assert b["mask"].dtype == np.float32
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
        assert b["inputs"].max() < data.vocab_size(cfg) == 259
        assert set(np.unique(b["mask"])) <= {0.0, 1.0} and b["mask"].mean() > 0.9


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for k in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("source", ["synthetic", "files"])
def test_resume_exactly_across_epochs(source, corpus):
    cfg = (DataCfg(source="synthetic", synthetic_docs=24) if source == "synthetic"
           else corpus)
    kw = dict(batch_size=4, seq_len=16, seed=3, process_index=0, process_count=1)
    full = take(data.make_train_iter(cfg, **kw), 14)  # several epochs of the tiny train split
    it = data.make_train_iter(cfg, **kw)
    head = take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    resumed = data.make_train_iter(cfg, **kw)
    resumed.set_state(state)
    assert_batches_equal(head + take(resumed, 9), full)
    it.set_state(state)  # the same iterator rewinds too
    assert_batches_equal(take(it, 9), full[5:])
    with pytest.raises(ConfigError, match="seq_len"):
        data.make_train_iter(cfg, **{**kw, "seq_len": 8}).set_state(state)


def test_epochs_reshuffle_same_windows():
    cfg = DataCfg(source="synthetic", synthetic_docs=24)
    n = len(data._windows(cfg, "train", 16)[0])
    it = data.make_train_iter(cfg, batch_size=1, seq_len=16, seed=0, process_count=1,
                              process_index=0)
    e1, e2 = (np.stack([b["inputs"][0] for b in take(it, n)]) for _ in range(2))
    assert not np.array_equal(e1, e2)
    np.testing.assert_array_equal(np.unique(e1, axis=0), np.unique(e2, axis=0))


def test_process_shards_disjoint_and_cover_global_batch(monkeypatch):
    # token value == stream position, so every window is unique and identifies itself
    docs = [np.arange(k * 50, (k + 1) * 50, dtype=np.int32) for k in range(8)]
    src = data_builder.InMemorySource(docs)
    splits = {"train": (src, np.full(8, 50)), "validation": (src, np.full(8, 50)),
              "fingerprint": "positions"}
    monkeypatch.setattr(data, "split_sources", lambda cfg: splits)
    cfg = DataCfg(source="synthetic")
    kw = dict(batch_size=8, seq_len=10, seed=1)
    n_steps = 5  # 40 windows = one epoch
    glob_batches = take(data.make_train_iter(cfg, **kw, process_index=0, process_count=1), n_steps)
    shards = [take(data.make_train_iter(cfg, **kw, process_index=p, process_count=2), n_steps)
              for p in range(2)]
    seen = []
    for t, g in enumerate(glob_batches):
        a, b = shards[0][t]["inputs"][:, 0], shards[1][t]["inputs"][:, 0]  # window starts
        assert shards[0][t]["inputs"].shape == (4, 10)
        assert not set(a) & set(b)
        assert sorted(np.concatenate([a, b])) == sorted(g["inputs"][:, 0])
        seen.extend(np.concatenate([a, b]))
    assert sorted(seen) == list(range(0, 400, 10))  # together: the whole epoch, once
    with pytest.raises(ConfigError, match="multiple of the process count"):
        data.make_train_iter(cfg, batch_size=7, seq_len=16, seed=0, process_index=0,
                             process_count=2)


def test_eval_batches_exact_and_deterministic(corpus):
    kw = dict(batch_size=4, seq_len=8)
    ev = data.make_eval_batches(corpus, **kw, max_batches=0)
    assert_batches_equal(ev, data.make_eval_batches(corpus, **kw, max_batches=0))
    _, lengths = data.split_sources(corpus)["validation"]
    assert sum(b["mask"].sum() for b in ev) == lengths.sum() - 1  # every target exactly once
    assert all(b["inputs"].shape == (4, 8) for b in ev)
    assert len(data.make_eval_batches(corpus, **kw, max_batches=1)) == 1


@pytest.mark.slow
def test_worker_processes_resume_exactly(corpus):
    """worker_count>0 (grain mp_prefetch) gives the same batches and resumes the same way."""
    kw = dict(batch_size=4, seq_len=8, seed=0, process_index=0, process_count=1)
    ref = take(data.make_train_iter(corpus, **kw), 6)
    cfg = DataCfg(**{**corpus.__dict__, "worker_count": 2})
    it = data.make_train_iter(cfg, **kw)
    got = take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    it2 = data.make_train_iter(cfg, **kw)
    it2.set_state(state)
    got += take(it2, 4)
    it2.close()
    assert_batches_equal(got, ref)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case, match", [
    ("unknown_source", r"data.source='web' is not a known source; choose one of \['files'"),
    ("no_paths", "data.paths is empty"),
    ("no_match", "data.paths: no file matches 'x'"),
    ("bad_ext", r"unsupported extension '.csv'; allowed: \['.jsonl', '.parquet', '.txt'\]"),
    ("empty_file", "hold no text"),
    ("blank_text", "no document with text"),
    ("missing_field", "no string field 'text'"),
    ("one_doc", "need at least 2"),
])
def test_bad_inputs_raise_config_error(case, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = DataCfg(source="files", data_dir=str(tmp_path / "cache"))
    cfg = {
        "unknown_source": DataCfg(source="web"),
        "no_paths": base,
        "no_match": DataCfg(**{**base.__dict__, "paths": ("x",)}),
        "bad_ext": DataCfg(**{**base.__dict__, "paths": (write(tmp_path / "d.csv", "a,b"),)}),
        "empty_file": DataCfg(**{**base.__dict__, "paths": (write(tmp_path / "e.txt", ""),)}),
        "blank_text": DataCfg(**{**base.__dict__, "paths": (write(tmp_path / "f.txt", "\n \n"),)}),
        "missing_field": DataCfg(**{**base.__dict__, "paths": (
            write(tmp_path / "g.jsonl", '{"body": "hi"}\n'),)}),
        "one_doc": DataCfg(**{**base.__dict__, "paths": (write(tmp_path / "h.txt", "only"),)}),
    }[case]
    with pytest.raises(ConfigError, match=match):
        data.validate(cfg)
        data.make_train_iter(cfg, batch_size=2, seq_len=8, seed=0)


def test_kjv_corpus(tmp_path):
    cfg = DataCfg(source="kjv", data_dir=str(tmp_path / "cache"))
    splits = data.split_sources(cfg)
    n_tokens = sum(int(splits[s][1].sum()) for s in ("train", "validation"))
    assert n_tokens > 3_000_000
    text = open(data.prepare_corpus(cfg), encoding="utf-8").read()
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    assert len(text.split("\n\n")) == 66  # one document per book
    src, _ = splits["validation"]
    n_eos = sum(int((src[i]["tokens"] == EOS_ID).sum()) for i in range(len(src)))
    assert 1 <= n_eos < 66
    b = next(data.make_train_iter(cfg, batch_size=2, seq_len=64, seed=0))
    assert b["inputs"].shape == (2, 64)


# ----------------------------------------------------------------------------- data.tokenizer


def test_byte_path_keeps_its_cache_path_and_records(tmp_path, monkeypatch):
    """data.tokenizer="" is today's pipeline: this fixed input's config name was computed by
    the code before data.tokenizer existed (lm/data_builder.py at 7d2f4d2)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_bytes("First doc.\n\nSecond doc é.\n\nThird.\n".encode())
    (tmp_path / "b.jsonl").write_text('{"text": "json doc"}\n{"text": "other"}\n')
    for f in ("a.txt", "b.jsonl"):
        os.utime(f, ns=(1_700_000_000_000_000_000,) * 2)
    cfg = DataCfg(source="files", paths=("a.txt", "b.jsonl"), eval_fraction=0.3,
                  data_dir="cache")
    path = data_builder.prepare(cfg, ["a.txt", "b.jsonl"])
    assert path == str(tmp_path / "cache" / "byte_docs" / "ff4cac239f8f449c6" / "1.0.0")
    prepared = data_builder.load_prepared(path)
    recs = [list(src[i]["tokens"]) for s in ("train", "validation")
            for src in [prepared[s][0]] for i in range(len(src))]
    want = ["First doc.", "Second doc é.", "Third.", "json doc", "other"]
    assert sorted(recs) == sorted(list(t.encode()) + [EOS_ID] for t in want)
    assert data.split_sources(DataCfg(source="synthetic"))["fingerprint"] == "synthetic-256-0"
    assert (data.vocab_size(cfg), data.eos_id(cfg), data.pad_id(cfg)) == (259, EOS_ID, PAD_ID)


def write_tokenizer(out, post: str = "none", corpus=TXT_DOCS + JSONL_DOCS) -> str:
    """A byte-level BPE ``tokenizer.json`` (+ tokenizer_config.json naming eos/bos/pad) built
    with ``tokenizers`` only; ``post`` = "none" | "bos" (prepends <s>) | "bos_eos"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    single = {"none": "$A", "bos": "<s> $A", "bos_eos": "<s> $A <|endoftext|>"}[post]
    if post != "none":
        bpe.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("<s>", 1), ("<|endoftext|>", 0)])
    os.makedirs(out, exist_ok=True)
    bpe.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"eos_token": "<|endoftext|>", "bos_token": "<s>", "pad_token": "<pad>"}, fh)
    return str(out)


def test_files_records_are_the_tokenizers_ids_plus_eos(corpus, tmp_path):
    from tokenization.hf import HFTokenizer
    tok_dir = write_tokenizer(tmp_path / "tok")
    cfg = DataCfg(**{**corpus.__dict__, "tokenizer": tok_dir, "packing": "document"})
    tok = HFTokenizer.load(tok_dir)
    assert (data.vocab_size(cfg), data.eos_id(cfg), data.pad_id(cfg)) == (
        tok.vocab_size, tok.eos_id, tok.pad_id) == (300, 0, 2)
    files = data.resolve_paths(cfg)
    docs = list(data_builder.iter_documents(tuple(files), "text", "paragraphs"))
    val = data_builder.held_out([data_builder.doc_hash(d) for d in docs], cfg.eval_fraction, "")
    splits = data.split_sources(cfg)
    for split, is_val in (("train", False), ("validation", True)):
        src, lengths = splits[split]
        got = [list(src[i]["tokens"]) for i in range(len(src))]
        want = [list(tok.encode(d.decode())) + [tok.eos_id] for d, v in zip(docs, val)
                if v == is_val]
        assert got == want and list(lengths) == [len(w) for w in want]
    byte_fp = data.split_sources(corpus)["fingerprint"]
    assert splits["fingerprint"] != byte_fp
    assert os.path.basename(os.path.dirname(data_builder.prepare(corpus, files))) == byte_fp
    ev = data.make_eval_batches(cfg, batch_size=4, seq_len=8, max_batches=0)
    for b in ev:  # document packing cuts at the tokenizer's eos (id 0)
        assert (b["mask"][b["inputs"] == 0] == 0).all()
    # outside every segment: the stream's final eos and the tokenizer's <pad> (id 2), not 258
    rest = np.concatenate([b["inputs"][b["segment_ids"] == 0] for b in ev])
    assert set(rest) <= {0, 2} and 2 in rest
    write_tokenizer(tmp_path / "tok", corpus=PARQUET_DOCS)  # a changed tokenizer.json
    assert data.split_sources(cfg)["fingerprint"] != splits["fingerprint"]


@pytest.mark.parametrize("post", ["bos", "bos_eos"])
def test_post_processor_frames_documents_eos_once(post, tmp_path):
    from tokenization.hf import HFTokenizer
    tok_dir = write_tokenizer(tmp_path / "tok", post=post)
    cfg = DataCfg(source="synthetic", synthetic_docs=8, tokenizer=tok_dir)
    tok = HFTokenizer.load(tok_dir)
    docs = data_builder.synthetic_docs(8, 0)
    val = data_builder.held_out([data_builder.doc_hash(d) for d in docs], 0.02, "")
    src, _ = data.split_sources(cfg)["train"]
    recs = [list(src[i]["tokens"]) for i in range(len(src))]
    want = [list(tok.encode(d.decode())) + ([] if post == "bos_eos" else [tok.eos_id])
            for d, v in zip(docs, val) if not v]
    assert recs == want
    assert all(r[0] == tok.bos_id == 1 and r[-1] == 0 and r.count(0) == 1 for r in recs)


def test_tokenizer_config_errors(tmp_path):
    from lm.config import Config, override
    from lm.setup import validate
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.tokenizer=.*no tokenizer.json there"):
        data.validate(DataCfg(source="synthetic", tokenizer=str(tmp_path / "empty")))
    tok_dir = write_tokenizer(tmp_path / "tok")
    with pytest.raises(ConfigError, match="cannot apply to data.source='bin'"):
        data.validate(DataCfg(source="bin", paths=("x.bin",), tokenizer=tok_dir))
    cfg = override(Config(), ["data.source=synthetic", f"data.tokenizer={tok_dir}",
                              "model.vocab_size=264"])
    with pytest.raises(ConfigError, match=r"has 300 ids but the model has model.vocab_size=264"):
        validate(cfg, 8)
    validate(override(cfg, ["model.vocab_size=304"]), 8)
