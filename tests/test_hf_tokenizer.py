"""tokenization.hf against transformers (the oracle) on three tokenizer.json kinds built here.

GPT-2-style byte-level BPE (with Qwen2.5's special tokens and ChatML template), Llama-2/Gemma-style
sentencepiece BPE with byte fallback (Gemma's specials and template) and Llama-3-style tiktoken BPE
(ByteLevel after Llama 3's regex Split, Llama 3.2's template, several eos ids in
generation_config.json). Each is trained on a small generated corpus and saved with
``PreTrainedTokenizerFast(...).save_pretrained``; nothing is downloaded.
"""

import json
import pathlib
import random
import shutil

import jinja2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tests.hf_chat_templates import GEMMA, LLAMA32, QWEN25
from tokenization.hf import HFTokenizer

transformers = pytest.importorskip("transformers")

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS = ("the earth was without form and void héllo wörld naïve café 中文 日本語 😀 👍🏽 "
         "don't we'll 12345 3.14 x=y+1 <tag> tabs\tand\nnewlines").split(" ")


def _corpus(n=1500, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _gpt2_qwen():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    kw = dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
              extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    return tok, kw, QWEN25, None


def _sentencepiece_gemma():
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(_corpus(seed=1), trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, show_progress=False))
    d = json.loads(tok.to_str())  # Llama-2 layout: byte tokens in the vocab, byte_fallback
    vocab = d["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    d["model"].update(byte_fallback=True, fuse_unk=True)
    tok = Tokenizer.from_str(json.dumps(d))
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(Regex(" "), "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
    kw = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
              extra_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    return tok, kw, GEMMA, None


def _tiktoken_llama3():
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(seed=2), trainers.BpeTrainer(
        vocab_size=450, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    gen = {"bos_token_id": bos, "eos_token_id": [tok.token_to_id(t) for t in
                                                 ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]}
    return tok, kw, LLAMA32, gen


BUILDERS = {"gpt2_qwen": _gpt2_qwen, "spm_gemma": _sentencepiece_gemma,
            "llama3": _tiktoken_llama3}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """name -> (directory, ours, transformers')."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    out = {}
    for name, build in BUILDERS.items():
        tok, kw, template, gen = build()
        d = tmp_path_factory.mktemp(name)
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **kw)
        hf.save_pretrained(d)
        if gen is not None:
            (d / "generation_config.json").write_text(json.dumps(gen))
        out[name] = (d, HFTokenizer.load(d), AutoTokenizer.from_pretrained(d))
    return out


SPECIAL_TEXT = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<pad>",
                "<start_of_turn>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>"]
PIECES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(SPECIAL_TEXT),
    st.sampled_from(WORDS),
    st.builds(lambda c, n: c * n, st.sampled_from([" ", "\n", "\t", "\r\n", "\u3000", "\xa0"]),
              st.integers(1, 6)),
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=4),
)
TEXTS = st.lists(PIECES, max_size=8).map("".join)


@settings(max_examples=60, deadline=None)
@given(text=TEXTS)
def test_ids_and_decode_equal_transformers_fuzzed(made, text):
    for name, (_, ours, theirs) in made.items():
        for add in (True, False):
            ids = ours.encode(text, add_special_tokens=add)
            assert ids.dtype == np.int32
            assert ids.tolist() == theirs.encode(text, add_special_tokens=add), (name, add)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                    ids.tolist(), skip_special_tokens=skip), (name, skip)
        if name != "spm_gemma":  # byte-level: exact round trip (specials decode to their text)
            assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


def test_specials_vocab_and_eos_ids(made):
    for name, (_, ours, theirs) in made.items():
        assert ours.vocab_size == len(theirs), name
        assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
            theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id), name
    _, q, _ = made["gpt2_qwen"]
    assert q.bos_id is None and q.eos_ids == {q.token_to_id("<|im_end|>")}
    _, llama, _ = made["llama3"]
    assert llama.pad_id is None and llama.eos_ids == {
        llama.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")}
    assert llama.encode("hi")[0] == llama.bos_id and llama.encode("hi", False)[0] != llama.bos_id


def _edited(src, dst, config=None, special_map=None):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    if special_map is not None:
        (dst / "special_tokens_map.json").write_text(json.dumps(special_map))
    return dst


def test_special_token_resolution_like_transformers(made, tmp_path):
    """special_tokens_map.json overrides only without added_tokens_decoder (the legacy path);
    AddedToken dicts; config tokens missing from tokenizer.json become added tokens."""
    from transformers import AutoTokenizer
    src, _, _ = made["llama3"]
    added = {"content": "[NEW]", "lstrip": False, "normalized": False, "rstrip": False,
             "single_word": False, "special": False}
    pad = {"content": "<|python_tag|>", "lstrip": False, "normalized": False, "rstrip": False,
           "single_word": False}
    smap = {"eos_token": "<|end_of_text|>", "pad_token": pad, "additional_special_tokens": ["[X]"]}
    dirs = [
        _edited(src, tmp_path / "legacy", special_map=smap),
        _edited(src, tmp_path / "decoder", special_map=smap, config={
            "eos_token": {"__type": "AddedToken", **pad, "content": "<|eom_id|>"},
            "added_tokens_decoder": {"9999": added}, "additional_special_tokens": ["<tag>"],
            "image_token": "<img>"}),
        _edited(src, tmp_path / "split", config={"split_special_tokens": True}),
    ]
    padded = Tokenizer.from_file(str(dirs[2] / "tokenizer.json"))  # padding/truncation in the file
    padded.enable_padding(pad_id=6, pad_token="<|python_tag|>", length=40)
    padded.enable_truncation(max_length=5)
    padded.save(str(dirs[2] / "tokenizer.json"))
    text = "a [NEW] b [X]<tag> <|end_of_text|><|eom_id|><|python_tag|> c<img>"
    template = "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ image_token }}"
    for d in dirs:
        ours, theirs = HFTokenizer.load(d), AutoTokenizer.from_pretrained(d)
        assert ours.apply_chat_template(CHATS["user"], chat_template=template) == (
            theirs.apply_chat_template(CHATS["user"], chat_template=template, tokenize=False))
        assert (ours.eos_id, ours.pad_id, ours.vocab_size) == (
            theirs.eos_token_id, theirs.pad_token_id, len(theirs)), d.name
        ids = ours.encode(text)
        assert ids.tolist() == theirs.encode(text), d.name
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
            ids.tolist(), skip_special_tokens=True), d.name
    legacy, decoder, split = (HFTokenizer.load(d) for d in dirs)
    assert legacy.eos_id == legacy.token_to_id("<|end_of_text|>") and legacy.pad_id is not None
    assert len(legacy.encode("[X]", add_special_tokens=False)) == 1  # registered from the map
    assert decoder.eos_id == decoder.token_to_id("<|eom_id|>")  # the map is ignored here
    assert len(decoder.encode("[NEW]", add_special_tokens=False)) == 1
    assert decoder.special_tokens["image_token"] == "<img>" and decoder.token_to_id("<img>")
    assert len(split.encode("<|eot_id|>", add_special_tokens=False)) > 1
    assert split.pad_id == 6 and len(split.encode(text)) > 5
    rows = split.encode_batch(["a", text])
    assert [len(r) for r in rows] == [len(split.encode("a")), len(split.encode(text))]


def test_unigram_decode_cleanup_like_transformers(tmp_path):
    """A Metaspace/Unigram (T5/ALBERT-style) tokenizer with clean_up_tokenization_spaces: the
    cleanup applies to non-BPE models only (as transformers)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    words = ["▁Hello", "▁world", "▁don", "▁we", "'re", "'t", "n't", "▁", "▁,", "▁!", "▁?", "▁'"]
    chars = sorted(set("".join(WORDS) + "Hello,world!don'twe're?é😀"))
    vocab = [("<unk>", 0.0), ("</s>", 0.0)] + [(w, -2.0) for w in words] + [
        (c, -5.0) for c in chars if c not in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["</s>"])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>",
                            clean_up_tokenization_spaces=True).save_pretrained(tmp_path)
    ours, theirs = HFTokenizer.load(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert ours.clean_up_spaces and ours.unk_id == theirs.unk_token_id
    for text in ["Hello , world ! don 't we 're ?", "café 😀 , x</s>"]:
        ids = ours.encode(text)
        assert ids.tolist() == theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids.tolist())
    assert ours.decode(ours.encode("Hello , world ! we 're")) == "Hello, world! we're"


def test_batch_and_padded(made):
    _, ours, theirs = made["spm_gemma"]
    texts = ["hello world", "", "中文 😀 and a much longer line of text <eos> here"]
    rows = ours.encode_batch(texts)
    assert [r.tolist() for r in rows] == [theirs.encode(t) for t in texts]
    ids_BxL, lengths_B = ours.encode_padded(texts)
    assert lengths_B.tolist() == [len(r) for r in rows] and ids_BxL.dtype == np.int32
    for b, r in enumerate(rows):
        assert ids_BxL[b, :len(r)].tolist() == r.tolist()
        assert (ids_BxL[b, len(r):] == ours.pad_id).all()
    _, llama, _ = made["llama3"]  # no pad token: right-padded with eos
    ids, lens = llama.encode_padded(["a", "abc def"], add_special_tokens=False)
    assert ids[0, lens[0]:].tolist() == [llama.eos_id] * int(lens[1] - lens[0])


CHATS = {
    "user": [{"role": "user", "content": "Hi there! 😀"}],
    "system": [{"role": "system", "content": "  Be terse.  "},
               {"role": "user", "content": "What is 2+2?"}],
    "multi": [{"role": "user", "content": "Hello"},
              {"role": "assistant", "content": " Hi, how can I help? "},
              {"role": "user", "content": "Tell me\n\na joke", "name": None}],
}


@pytest.mark.parametrize("name", ["gpt2_qwen", "llama3", "spm_gemma"])
@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_equals_transformers(made, name, chat, gen):
    _, ours, theirs = made[name]
    msgs = CHATS[chat]
    kw = {"date_string": "02 Dec 2026"} if name == "llama3" else {}
    if name == "spm_gemma" and chat == "system":  # Gemma's template refuses a system turn
        for f in (ours.apply_chat_template, theirs.apply_chat_template):
            with pytest.raises(jinja2.TemplateError, match="System role not supported"):
                f(msgs, add_generation_prompt=gen, tokenize=False)
        return
    want = theirs.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False, **kw)
    assert ours.apply_chat_template(msgs, add_generation_prompt=gen, **kw) == want
    ids = ours.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, **kw)
    assert ids.tolist() == theirs.apply_chat_template(
        msgs, add_generation_prompt=gen, tokenize=True, return_dict=False, **kw)


TOOL = {"type": "function", "function": {
    "name": "add", "description": "Adds a and b — exactly.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}},
                   "required": ["a"]}}}


def test_chat_template_tools_dates_and_continue(made):
    msgs = CHATS["system"]
    for name in ("gpt2_qwen", "llama3"):  # tojson (non-ASCII kept, indent=4 in Llama's)
        _, ours, theirs = made[name]
        want = theirs.apply_chat_template(msgs, tools=[TOOL], tokenize=False,
                                          add_generation_prompt=True)
        assert ours.apply_chat_template(msgs, tools=[TOOL]) == want and "—" in want
    _, ours, theirs = made["llama3"]  # strftime_now supplies today's date
    assert ours.apply_chat_template(msgs) == theirs.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True)
    _, ours, theirs = made["gpt2_qwen"]
    prefill = CHATS["user"] + [{"role": "assistant", "content": "The answer is"}]
    want = theirs.apply_chat_template(prefill, tokenize=False, continue_final_message=True)
    got = ours.apply_chat_template(prefill, add_generation_prompt=False,
                                   continue_final_message=True)
    assert got == want and got.endswith("The answer is")


CUSTOM_TEMPLATES = [  # block whitespace (trim/lstrip), the message dicts the template sees, helpers
    "{% for m in messages %}\n    {% if m.role == 'user' %}\n  <u>{{ m.content }}\n    {% else %}\n"
    "<a>{{ m.content }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n<a>\n"
    "{% endif %}",
    "{% for m in messages %}{{ m | tojson }}|{% endfor %}{{ pair }}{{ flags | tojson }}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}"
    "{% endif %}{% set ns.n = ns.n + m.content | length %}{% endfor %}{{ ns.n }} {{ eos_token }}"
    "{{ dict(a=1) | tojson }}{{ strftime_now('%Y') }}",
]


@pytest.mark.parametrize("template", CUSTOM_TEMPLATES)
def test_custom_templates_equal_transformers(made, template):
    _, ours, theirs = made["gpt2_qwen"]
    msgs = [{"role": "user", "content": "hi", "name": None},
            {"role": "assistant", "content": "yo", "reasoning": "think first"},
            {"role": "user", "content": "bye"}]
    kw = {"pair": (1, "a"), "flags": [np.int64(3), np.bool_(False)]}
    for gen in (True, False):
        want = theirs.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                          add_generation_prompt=gen, **kw)
        assert ours.apply_chat_template(msgs, gen, chat_template=template, **kw) == want


def test_template_sources_and_save_round_trip(made, tmp_path):
    from transformers import AutoTokenizer
    src, ours, _ = made["gpt2_qwen"]
    template = ours.get_chat_template()
    # the template as a tokenizer_config.json string, then as a list of named templates
    for value, kw in ((template, {}), ([{"name": "default", "template": "{{ 'D' }}"},
                                        {"name": "tool_use", "template": template}],
                                       {"tools": [TOOL]})):
        d = tmp_path / f"cfg_{type(value).__name__}"
        shutil.copytree(src, d)
        (d / "chat_template.jinja").unlink()
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": value}))
        theirs = AutoTokenizer.from_pretrained(d)
        for m in (CHATS["multi"], CHATS["system"]):
            assert HFTokenizer.load(d).apply_chat_template(m, **kw) == theirs.apply_chat_template(
                m, tokenize=False, add_generation_prompt=True, **kw)
    both = _edited(src, tmp_path / "both", config={"chat_template": "{{ 'config' }}"})
    got = HFTokenizer.load(both).apply_chat_template(CHATS["user"], False)
    want = AutoTokenizer.from_pretrained(both).apply_chat_template(CHATS["user"], tokenize=False)
    assert got == want == ours.apply_chat_template(CHATS["user"], False)  # the .jinja file wins
    out = tmp_path / "saved"
    names = ours.save(out)
    assert "tokenizer.json" in names and "chat_template.jinja" in names
    for n in names:
        assert (out / n).read_bytes() == (src / n).read_bytes()
    again, theirs = HFTokenizer.load(out), AutoTokenizer.from_pretrained(out)
    text = "round <|im_end|> trip 😀"
    assert again.encode(text).tolist() == ours.encode(text).tolist() == theirs.encode(text)
    assert again.apply_chat_template(CHATS["multi"]) == ours.apply_chat_template(CHATS["multi"])


def test_sandbox_and_template_helpers():
    from tokenization.hf import _compile
    assert _compile("{{ {'a': '€<'} | tojson }}").render() == '{"a": "€<"}'
    assert _compile("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}"
                    "{% endfor %}").render() == "01"
    assert _compile("{% generation %}x{% endgeneration %}").render() == "x"
    ns = "{% set n = namespace(k=1) %}{% set n.k = n.k + 1 %}{{ n.k }}"
    assert _compile(ns).render() == "2"
    with pytest.raises(jinja2.exceptions.SecurityError):
        _compile("{{ ''.__class__.__mro__ }}").render()
    with pytest.raises(jinja2.exceptions.SecurityError):
        _compile("{% set n = namespace(_x=1) %}").render()
    with pytest.raises(jinja2.TemplateError, match="nope"):
        _compile("{{ raise_exception('nope') }}").render()


def test_no_transformers_at_run_time(made):
    import subprocess
    import sys
    d, _, _ = made["llama3"]
    code = ("import sys; from tokenization.hf import HFTokenizer;"
            "t = HFTokenizer.load(sys.argv[1]);"
            "t.decode(t.apply_chat_template([{'role': 'user', 'content': 'x'}], tokenize=True));"
            "assert not {'transformers', 'torch'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code, str(d)], check=True,
                   cwd=str(pathlib.Path(__file__).resolve().parent.parent))


def test_errors(made, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFTokenizer.load(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"no tokenizer.json in {empty}"):
        HFTokenizer.load(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json in .* could not be parsed"):
        HFTokenizer.load(bad)
    src, ours, _ = made["llama3"]
    broken = tmp_path / "broken_cfg"
    shutil.copytree(src, broken)
    (broken / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError, match="tokenizer_config.json in .* is not valid JSON"):
        HFTokenizer.load(broken)
    (broken / "tokenizer_config.json").write_text("{}")
    (broken / "chat_template.jinja").unlink()
    no_template = HFTokenizer.load(broken)
    with pytest.raises(ValueError, match="no chat template in .*chat_template.jinja"):
        no_template.apply_chat_template(CHATS["user"])
    assert no_template.apply_chat_template(CHATS["user"], chat_template="{{ messages[0].content }}"
                                           ) == "Hi there! 😀"
    with pytest.raises(ValueError, match="neither a pad_token nor an eos_token"):
        no_template.encode_padded(["a"])
    with pytest.raises(ValueError, match="non-empty list"):
        ours.apply_chat_template([])
    with pytest.raises(TypeError, match="JSON-schema dicts"):
        ours.apply_chat_template(CHATS["user"], tools=[len])
