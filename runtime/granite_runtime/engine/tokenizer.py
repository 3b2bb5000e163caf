"""Text in and out: tokenizer.json, the chat template, and the stop tokens.

The chat template comes from the checkpoint, so it is untrusted code: it is rendered in
jinja2's immutable sandbox, which refuses attribute tricks that reach Python internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from granite_runtime.spec import bounded_read
from granite_runtime.spec.errors import ModelLoadError, RequestError

# What a template may build by arithmetic: a chat prompt is kilobytes; `'x' * 10**8` is an
# attack on the server's memory, not a prompt.
MAX_TEMPLATE_VALUE = 1 << 20


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, with repetition and powers bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("the chat template raises a number to a power above 64")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                repeated = isinstance(seq, str | list | tuple) and isinstance(n, int)
                if repeated and len(seq) * n > MAX_TEMPLATE_VALUE:
                    raise SecurityError(
                        f"the chat template builds a value over {MAX_TEMPLATE_VALUE:,} long"
                    )
        return super().call_binop(context, operator, left, right)


def _raise(message: str):
    raise RequestError(f"the chat template refused the conversation: {message}")


MAX_SIDE_FILE_BYTES = 16 << 20  # tokenizer_config.json with a long chat template: ~10 KB
MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json of a 100k vocabulary: ~7 MB


def _read_json(path: Path) -> dict:
    """An optional JSON side file: absent is {}, anything but a bounded object is refused."""
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        return bounded_read.read_json_object(path, MAX_SIDE_FILE_BYTES)
    except bounded_read.UnsafeInput as bad:
        raise ModelLoadError(bad.message) from None


def _token_ids(value, path: str) -> list[int]:
    """eos_token_id as configs write it: an id, a list of ids, or absent."""
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelLoadError(f"{path}: eos_token_id {value!r} is not a token id or a list of ids.")
    return ids


def _token_text(value) -> str | None:
    """tokenizer_config writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class TextCodec:
    tokenizer: Tokenizer
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    stop_token_ids: set[int] = field(default_factory=set)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @cached_property
    def concatenates(self) -> bool:
        """Whether decode(a + b) == decode(a) + decode(b) wherever decode(a) does not end in
        U+FFFD (no character cut in two): true of byte-level BPE (Granite's, GPT-2's),
        whose decoder maps tokens to bytes; not of decoders that strip a leading space
        (SentencePiece's Metaspace)."""
        decoder = json.loads(self.tokenizer.to_str()).get("decoder") or {}
        return decoder.get("type") == "ByteLevel"

    def render_chat(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        if not self.chat_template:
            raise RequestError("this model has no chat template; use /v1/completions.")
        env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(
            raise_exception=_raise, strftime_now=lambda fmt: datetime.now(UTC).strftime(fmt)
        )
        try:
            return env.from_string(self.chat_template).render(
                messages=messages,
                tools=tools or None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except RequestError:
            raise
        except TemplateError as bad:
            raise RequestError(f"the chat template failed to render: {bad}") from None

    @classmethod
    def from_dir(cls, root: Path) -> TextCodec:
        path = root / "tokenizer.json"
        try:
            data = bounded_read.read_bytes(path, MAX_TOKENIZER_BYTES)
            tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except bounded_read.UnsafeInput as bad:
            message = f"{root}: no tokenizer.json." if bad.missing else bad.message
            raise ModelLoadError(message) from None
        except Exception as bad:  # tokenizers raises plain Exception
            raise ModelLoadError(f"{path}: not a valid tokenizer ({str(bad)[:200]}).") from None
        tok_config = _read_json(root / "tokenizer_config.json")
        gen_config = _read_json(root / "generation_config.json")
        model_config = _read_json(root / "config.json")
        eos = _token_text(tok_config.get("eos_token"))
        stop: set[int] = set()
        for name, conf in (("generation_config.json", gen_config), ("config.json", model_config)):
            stop.update(_token_ids(conf.get("eos_token_id"), str(root / name)))
        if eos and tokenizer.token_to_id(eos) is not None:
            stop.add(tokenizer.token_to_id(eos))
        template = tok_config.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise ModelLoadError(f"{root}/tokenizer_config.json: chat_template is not a string.")
        return cls(
            tokenizer,
            template,
            _token_text(tok_config.get("bos_token")),
            eos,
            stop,
        )
