"""Text in and out: tokenizer.json, the chat template, and the stop tokens.

The chat template comes from the checkpoint, so it is untrusted code: it is rendered in
jinja2's immutable sandbox, which refuses attribute tricks that reach Python internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from granite_runtime.errors import ModelLoadError, RequestError


def _raise(message: str):
    raise RequestError(f"the chat template refused the conversation: {message}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as bad:
        raise ModelLoadError(f"{path}: not valid JSON ({bad.msg}, line {bad.lineno}).") from None


def _token_text(value) -> str | None:
    """tokenizer_config writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


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

    def render_chat(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        if not self.chat_template:
            raise RequestError("this model has no chat template; use /v1/completions.")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
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
        if not path.is_file():
            raise ModelLoadError(f"{root}: no tokenizer.json.")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as bad:  # tokenizers raises plain Exception
            raise ModelLoadError(f"{path}: not a valid tokenizer ({bad}).") from None
        tok_config = _read_json(root / "tokenizer_config.json")
        gen_config = _read_json(root / "generation_config.json")
        model_config = _read_json(root / "config.json")
        eos = _token_text(tok_config.get("eos_token"))
        stop: set[int] = set()
        for source in (gen_config.get("eos_token_id"), model_config.get("eos_token_id")):
            stop.update(
                source if isinstance(source, list) else [source] if source is not None else []
            )
        if eos and tokenizer.token_to_id(eos) is not None:
            stop.add(tokenizer.token_to_id(eos))
        return cls(
            tokenizer,
            tok_config.get("chat_template"),
            _token_text(tok_config.get("bos_token")),
            eos,
            stop,
        )
