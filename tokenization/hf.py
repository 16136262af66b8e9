"""A Hugging Face checkpoint's tokenizer: ``tokenizer.json``, special tokens, Jinja chat template.

``HFTokenizer.load(dir)`` reads the files ``transformers.AutoTokenizer.from_pretrained(dir)`` reads
for a fast tokenizer, with the ``tokenizers`` library and ``jinja2`` only (``transformers`` is a
test oracle, never imported here):

- ``encode(text, add_special_tokens=True)`` -> ids (np.int32), ``decode(ids, skip_special_tokens)``,
  ``encode_batch(texts)`` (list of arrays), ``encode_padded(texts)`` -> ``ids_BxL, lengths_B``
  right-padded with ``pad_id`` (``eos_id`` when the checkpoint has no pad token);
- ``vocab_size`` (= ``len(AutoTokenizer)``: base vocab plus added tokens), ``bos_id``,
  ``eos_id``, ``pad_id`` (None when unset, as Qwen's ``bos_token: null``) and ``eos_ids``: the
  tokenizer's eos together with every ``eos_token_id`` of ``generation_config.json`` (int or list;
  ``config.json``'s when there is no generation config), the set ``generate`` stops on;
- ``apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)``;
- ``save(out_dir)``: the tokenizer files copied byte for byte, each written atomically.

Transformers (5.x) behaviours reproduced:
- special tokens: bos/eos/unk/sep/pad/cls/mask and any model-specific ``*_token`` key of
  ``tokenizer_config.json`` (strings or serialized ``AddedToken`` dicts; all of them are
  chat-template variables); ``special_tokens_map.json`` overrides them only when the config has no
  ``added_tokens_decoder`` (transformers' legacy path); ``pad_token`` falls back to the padding
  block of ``tokenizer.json``; every named and extra (``extra_special_tokens`` /
  ``additional_special_tokens``) special token, and every ``added_tokens_decoder`` entry, is
  registered as an added token so its literal text in the input encodes to its one id;
  ``split_special_tokens`` is honoured; the file's padding/truncation blocks are not applied
  (transformers switches them off for a call that asks for neither);
- ``add_bos_token``/``add_eos_token`` are ignored when ``tokenizer.json`` exists (its post-processor
  decides); ``clean_up_tokenization_spaces`` is applied on decode only for non-BPE models;
- chat templates: ``chat_template.jinja`` and ``additional_chat_templates/*.jinja`` take priority
  over the config's ``chat_template`` (a string, or a list of ``{name, template}``); with several,
  ``default`` is used (``tool_use`` when tools are passed) and a name can be passed as
  ``chat_template=``; rendered in an ``ImmutableSandboxedEnvironment`` with ``trim_blocks``,
  ``lstrip_blocks``, the ``loopcontrols`` extension and a ``{% generation %}`` tag, the
  ``raise_exception`` / ``strftime_now`` globals, the non-escaping ``tojson`` filter, the restricted
  ``dict`` and ``namespace`` globals, and ``bos_token``, ``eos_token``, ... as variables (caller
  kwargs override them); ``None``-valued message keys dropped; reasoning fields aliased;
  ``continue_final_message``; ``tokenize=True`` encodes without adding special tokens.

Not reproduced: tools given as Python callables (pass JSON schemas), batched conversations,
assistant-token masks, ``sanitize_control_tokens``, the Mistral pre-tokenizer regex patch, and
checkpoints with only a slow tokenizer (``tokenizer.model`` or ``vocab.json``, no tokenizer.json).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
GENERATION_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# transformers' SPECIAL_TOKENS_ATTRIBUTES: the names a chat template sees as variables
SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                 "mask_token")
# files save() copies (generation_config.json belongs to the model and is written by lm.hf.save)
SAVED_FILES = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_MAP_FILE, CHAT_TEMPLATE_FILE, "tokenizer.model",
               "added_tokens.json")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name} in {path.parent} is not valid JSON: {e}") from None


def _content(token) -> str | None:
    """A special token as stored: a string, a serialized AddedToken dict, or null."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _added_token(d: dict, special: bool):
    from tokenizers import AddedToken
    return AddedToken(d["content"], single_word=d.get("single_word", False),
                      lstrip=d.get("lstrip", False), rstrip=d.get("rstrip", False),
                      normalized=d.get("normalized", not special), special=special)


def _named_specials(config: dict) -> dict:
    """name -> token of transformers' named special tokens: the standard attributes, then the
    model-specific ones (any other ``*_token`` key holding a token, or a dict-valued
    ``extra_special_tokens``), which also become chat-template variables."""
    named = {a: config[a] for a in SPECIAL_ATTRS if _content(config.get(a)) is not None}
    named.update({k: v for k, v in config.items() if k.endswith("_token") and k not in named
                  and k not in SPECIAL_ATTRS and _content(v) is not None})
    if isinstance(config.get("extra_special_tokens"), dict):
        named.update({k: v for k, v in config["extra_special_tokens"].items()
                      if _content(v) is not None})
    return named


def _eos_from(cfg: dict | None) -> list[int]:
    eos = (cfg or {}).get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class HFTokenizer:
    """A checkpoint's fast tokenizer, special tokens and chat templates (see module docstring)."""

    def __init__(self, directory: Path, backend, config: dict, chat_templates: dict[str, str],
                 eos_ids: frozenset[int]):
        self.directory, self.backend, self.config = directory, backend, config
        self.chat_templates = chat_templates
        self.special_tokens = {k: _content(v) for k, v in _named_specials(config).items()}
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            self._id_of(self.special_tokens.get(a))
            for a in ("bos_token", "eos_token", "pad_token", "unk_token"))
        self.eos_ids = frozenset(eos_ids | ({self.eos_id} if self.eos_id is not None else set()))
        self.clean_up_spaces = (bool(config.get("clean_up_tokenization_spaces", False))
                                and type(backend.model).__name__ != "BPE")

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike) -> HFTokenizer:
        from tokenizers import Tokenizer

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer directory {d} does not exist (expected a Hugging "
                                    f"Face checkpoint directory holding {TOKENIZER_FILE})")
        if not (d / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(
                f"no {TOKENIZER_FILE} in {d}: HFTokenizer reads the fast-tokenizer file "
                f"(a checkpoint with only tokenizer.model / vocab.json must be converted first, "
                f"e.g. AutoTokenizer.from_pretrained(dir).save_pretrained(dir))")
        try:
            backend = Tokenizer.from_file(str(d / TOKENIZER_FILE))
        except Exception as e:  # the Rust parser raises a bare Exception
            raise ValueError(f"{TOKENIZER_FILE} in {d} could not be parsed by tokenizers: "
                             f"{e}") from None
        config = _read_json(d / CONFIG_FILE) or {}
        if "added_tokens_decoder" not in config:
            # transformers' legacy path: special_tokens_map.json values replace the config's
            config.update(_read_json(d / SPECIAL_MAP_FILE) or {})
        if config.get("pad_token") is None and backend.padding is not None:
            config["pad_token"] = backend.padding["pad_token"]
        # transformers encodes without the file's padding/truncation unless a call asks for them
        backend.no_padding()
        backend.no_truncation()
        cls._register_specials(backend, config)
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        gen = _read_json(d / GENERATION_FILE)
        eos_ids = _eos_from(gen) if gen is not None else _eos_from(_read_json(d / "config.json"))
        return cls(d, backend, config, cls._read_chat_templates(d, config), frozenset(eos_ids))

    @staticmethod
    def _register_specials(backend, config: dict) -> None:
        """Add what transformers adds at init: added_tokens_decoder entries missing from the
        backend, then every named/extra special token as a special added token."""
        from tokenizers import AddedToken

        have = {str(t.content): t for t in backend.get_added_tokens_decoder().values()}
        decoder = {str(v["content"]): v
                   for v in (config.get("added_tokens_decoder") or {}).values()
                   if isinstance(v, dict) and "content" in v}
        new = [_added_token(v, v.get("special", False))
               for c, v in decoder.items() if c not in have]
        if new:
            backend.add_tokens(new)
            have = {str(t.content): t for t in backend.get_added_tokens_decoder().values()}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        named = list(_named_specials(config).values()) + ([] if isinstance(extra, dict)
                                                          else list(extra))
        specials = []
        for tok in named:
            content = _content(tok)
            if content is None:
                continue
            if content in have:
                t = have[content]
                specials.append(AddedToken(content, single_word=t.single_word, lstrip=t.lstrip,
                                           rstrip=t.rstrip, normalized=t.normalized, special=True))
            elif content in decoder:
                specials.append(_added_token(decoder[content], True))
            elif isinstance(tok, dict):
                specials.append(_added_token(tok, True))
            else:
                specials.append(AddedToken(content, special=True, normalized=False))
        if specials:
            backend.add_special_tokens(specials)

    @staticmethod
    def _read_chat_templates(d: Path, config: dict) -> dict[str, str]:
        """Template files take priority over the config's ``chat_template`` (as transformers)."""
        templates = {}
        if (d / CHAT_TEMPLATE_FILE).is_file():
            templates["default"] = (d / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        if (d / CHAT_TEMPLATE_DIR).is_dir():
            for f in sorted((d / CHAT_TEMPLATE_DIR).glob("*.jinja")):
                templates[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
        if templates:
            return templates
        ct = config.get("chat_template")
        if isinstance(ct, str):
            return {"default": ct}
        if isinstance(ct, list):
            return {t["name"]: t["template"] for t in ct}
        return {}

    # -- ids -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """Ids of ``text`` as ``AutoTokenizer.encode`` gives them (int32 array)."""
        return np.asarray(self.backend.encode(text, add_special_tokens=add_special_tokens).ids,
                          dtype=np.int32)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        encs = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def encode_padded(self, texts: list[str], add_special_tokens: bool = True,
                      pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``ids_BxL`` right-padded (with ``pad_id``, else the checkpoint's pad, else its eos) and
        ``lengths_B``; L is the longest row."""
        return self.pad(self.encode_batch(texts, add_special_tokens), pad_id)

    def pad(self, rows: list[np.ndarray],
            pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad int rows into ``ids_BxL`` and ``lengths_B`` (pad as in ``encode_padded``)."""
        pad = next((p for p in (pad_id, self.pad_id, self.eos_id) if p is not None), None)
        if pad is None:
            raise ValueError(f"tokenizer in {self.directory} has neither a pad_token nor an "
                             f"eos_token: pass pad_id= explicitly")
        lengths_B = np.asarray([len(r) for r in rows], dtype=np.int32)
        ids_BxL = np.full((len(rows), int(lengths_B.max(initial=0))), pad, dtype=np.int32)
        for b, r in enumerate(rows):
            ids_BxL[b, :len(r)] = r
        return ids_BxL, lengths_B

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):
                text = text.replace(a, b)
        return text

    # -- chat ----------------------------------------------------------------------------------
    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        """The template source transformers' ``get_chat_template`` picks."""
        t = self.chat_templates
        if chat_template is not None:
            return t.get(chat_template, chat_template)
        if not t:
            raise ValueError(
                f"no chat template in {self.directory}: looked for {CHAT_TEMPLATE_FILE}, "
                f"{CHAT_TEMPLATE_DIR}/*.jinja and the 'chat_template' key of {CONFIG_FILE}; "
                f"pass chat_template=<jinja source> to use one")
        if tools is not None and "tool_use" in t:
            return t["tool_use"]
        if "default" in t:
            return t["default"]
        raise ValueError(f"the tokenizer in {self.directory} has several chat templates and no "
                         f"'default': pass chat_template= one of {sorted(t)}")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, *, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            continue_final_message: bool | str = False, **kwargs):
        """Render ``messages`` with the checkpoint's template exactly as transformers'
        ``apply_chat_template(..., tokenize=False)``; ``tokenize=True`` gives its ids (int32, no
        special tokens added beyond what the template writes). Extra kwargs reach the template
        (``date_string=``, ``enable_thinking=``, ...). Unlike transformers, add_generation_prompt
        defaults to True (the prompt-for-sampling use)."""
        source = self.get_chat_template(chat_template, tools)
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("apply_chat_template needs a non-empty list of {role, content} dicts")
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise TypeError("tools must be JSON-schema dicts (Python callables are not converted)")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible")
        chat = []
        for m in messages:
            if not isinstance(m, dict):
                raise TypeError(f"chat messages must be dicts, got {m!r}")
            m = {k: v for k, v in _plain(m).items() if v is not None}
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        tag, field = "CONTINUE_FINAL_MESSAGE_TAG ", None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final = chat[-1].get(field)
            if not isinstance(final, str) or field not in source:
                raise ValueError(f'continue_final_message: the final message has no string '
                                 f'"{field}", or the template does not read it')
            chat[-1][field] = final + tag
        variables = {**self.special_tokens, **_plain(kwargs)}
        text = _compile(source).render(messages=chat, tools=_plain(tools),
                                       documents=_plain(documents),
                                       add_generation_prompt=add_generation_prompt, **variables)
        if field is not None:
            if final.strip() not in text or tag.strip() not in text:
                raise ValueError("continue_final_message: the template dropped part of the final "
                                 "message, so it cannot be continued")
            at = text.rindex(tag.strip())
            text = text[:at] if text[at:at + len(tag)] == tag else text[:at].rstrip()
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- saving --------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> list[str]:
        """Copy the tokenizer files (byte for byte, each atomically) into ``out_dir``; returns the
        names written. ``generation_config.json`` is the model's and is not copied."""
        out = Path(out_dir)
        names = [n for n in SAVED_FILES if (self.directory / n).is_file()]
        if (self.directory / CHAT_TEMPLATE_DIR).is_dir():
            names += [f"{CHAT_TEMPLATE_DIR}/{f.name}"
                      for f in sorted((self.directory / CHAT_TEMPLATE_DIR).glob("*.jinja"))]
        blobs = {n: (self.directory / n).read_bytes() for n in names}  # read all before writing
        for n, data in blobs.items():
            _write_atomic(out / n, data)
        return names


def _plain(value):
    """transformers' ``_plain_template_data``: what the sandbox sees is rebuilt from plain JSON-like
    types (tuples stay tuples); anything else becomes an inert ``"<TypeName>"`` placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


@lru_cache(maxsize=32)
def _compile(source: str):
    """transformers' ``_cached_compile_jinja_template``, minus assistant-mask tracking."""
    import jinja2
    import jinja2.exceptions
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers tracks it
        for assistant masks)."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            node = jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body)
            return node.set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace, "
                    f"got {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env.from_string(source)
