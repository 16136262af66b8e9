"""Data side of document-masked packing (lm.packing, data.packing="document"): numpy only."""

import json

import numpy as np
import pytest

from lm import data, data_builder
from lm.data import DataCfg, PackedWindows
from lm.packing import document_layout, pack_examples, positions_from_segments
from lm.sharding import ConfigError
from tokenization.bytes import EOS_ID, PAD_ID

E = 9  # eos id of the hand cases


def test_document_layout_hand_case():
    # docs [1 2 E] [3 E] [4 5 ...(cut by the window); two pads after 7 valid inputs
    x = np.array([1, 2, E, 3, E, 4, 5, PAD_ID, PAD_ID])
    seg, pos, keep = document_layout(x, 7, E)
    np.testing.assert_array_equal(seg, [1, 1, 1, 2, 2, 3, 3, 0, 0])
    np.testing.assert_array_equal(pos, [0, 1, 2, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(keep, [1, 1, 0, 1, 0, 1, 1, 1, 1])
    assert seg.dtype == pos.dtype == np.int32
    np.testing.assert_array_equal(positions_from_segments(np.array([1, 1, 2, 2, 2, 0])),
                                  [0, 1, 0, 1, 2, 0])


def _stream_docs(stream):
    cuts = np.flatnonzero(stream == EOS_ID)
    return np.split(stream, cuts + 1)[:-1]


def check_document_windows(win: PackedWindows, docs):
    """Every kept target is predicted from inputs of its own document only, at the position it
    has in that document; the first token of each document is never a target."""
    seen = 0
    for i in range(len(win)):
        r = win[i]
        assert set(r) == {"inputs", "targets", "mask", "segment_ids", "positions"}
        x, t, m, seg, pos = (r[k] for k in ("inputs", "targets", "mask", "segment_ids",
                                            "positions"))
        np.testing.assert_array_equal(m[x == EOS_ID], 0.0)  # eos -> next doc's first token
        np.testing.assert_array_equal(seg[1:] != seg[:-1],
                                      (x[:-1] == EOS_ID) | ((seg[1:] == 0) & (seg[:-1] != 0)))
        valid = seg > 0
        for s in np.unique(seg[valid]):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
        seen += int(m.sum())
    n_tokens = sum(len(d) for d in docs)
    assert seen == n_tokens - len(docs)  # all targets but each document's first token


def test_windows_document_mode_on_in_memory_docs():
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(0, 256, n), EOS_ID).astype(np.int32) for n in (5, 1, 17, 9)]
    lengths = np.array([len(d) for d in docs])
    win = PackedWindows(data_builder.InMemorySource(docs), lengths, seq_len=7, document=True)
    check_document_windows(win, docs)
    concat = PackedWindows(data_builder.InMemorySource(docs), lengths, seq_len=7)
    for i in range(len(win)):  # document mode only adds keys and masks boundary targets
        a, b = win[i], concat[i]
        assert set(b) == {"inputs", "targets", "mask"}
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["mask"], b["mask"] * (b["inputs"] != EOS_ID))


def test_jsonl_files_and_train_eval_batches(tmp_path):
    texts = [f"document number {i} " * (1 + i % 5) for i in range(12)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    cfg = DataCfg(source="files", paths=(str(path),), data_dir=str(tmp_path / "cache"),
                  eval_fraction=0.3, packing="document")
    win, _ = data._windows(cfg, "train", 16)
    src, _ = data.split_sources(cfg)["train"]
    check_document_windows(win, _stream_docs(np.concatenate(
        [src[i]["tokens"] for i in range(len(src))])))
    b = next(data.make_train_iter(cfg, batch_size=4, seq_len=16, seed=0))
    assert b["segment_ids"].shape == b["positions"].shape == (4, 16)
    assert b["segment_ids"].dtype == b["positions"].dtype == np.int32
    ev = data.make_eval_batches(cfg, batch_size=64, seq_len=16, max_batches=0)
    assert ev[-1]["segment_ids"].shape == (64, 16) and (ev[-1]["segment_ids"][-1] == 0).all()
    it = data.make_train_iter(cfg, batch_size=4, seq_len=16, seed=0)
    assert it.get_state()["packing"] == "document"
    concat = data.make_train_iter(DataCfg(**{**cfg.__dict__, "packing": "concat"}),
                                  batch_size=4, seq_len=16, seed=0)
    assert "packing" not in concat.get_state()  # concat iterator state as before


def test_bad_packing_is_config_error():
    with pytest.raises(ConfigError, match=r"data.packing='docs' is not one of \['concat', "):
        data.validate(DataCfg(source="synthetic", packing="docs"))


def test_pack_examples_rows_and_segments():
    ex = [(np.array([1, 2, 3]), np.array([2, 3, 4]), np.array([0, 1, 1.0])),
          (np.array([5, 6]), np.array([6, 7]), np.array([1, 1.0])),
          (np.array([8, 8, 8, 8]), np.array([8, 8, 8, 0]), np.array([1, 1, 1, 0.0]))]
    out = pack_examples(ex, seq_len=5, pad_id=PAD_ID)
    np.testing.assert_array_equal(out["inputs"], [[1, 2, 3, 5, 6], [8, 8, 8, 8, PAD_ID]])
    np.testing.assert_array_equal(out["targets"], [[2, 3, 4, 6, 7], [8, 8, 8, 0, PAD_ID]])
    np.testing.assert_array_equal(out["mask"], [[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    with pytest.raises(ValueError, match="must be equal and in 1..seq_len=2"):
        pack_examples(ex, seq_len=2, pad_id=PAD_ID)


def test_sft_next_fit_fills_rows_in_order_and_wraps():
    from rl.iga.sft import example_rows, next_fit
    lengths = np.array([3, 4, 2, 5])
    order = np.array([0, 1, 2, 3])
    assert next_fit(order, 0, lengths, rows=2, width=6) == [0, 1, 2]
    assert next_fit(order, 3, lengths, rows=2, width=6) == [3, 0]  # wraps to the next epoch
    data = {k: np.arange(4 * 6).reshape(4, 6) for k in ("inputs", "targets", "mask")}
    rows = example_rows(data, [0, 1, 2], lengths)
    out = pack_examples(rows, 6, PAD_ID)
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 2, 2]])
    np.testing.assert_array_equal(out["inputs"][1], [6, 7, 8, 9, 12, 13])
