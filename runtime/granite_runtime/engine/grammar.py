"""Constrained decoding: grammars that every sampled token must keep satisfiable.

llguidance (PyPI) compiles a JSON schema, or a Lark grammar with embedded schemas, against
the model's tokenizer, and for each step gives a bitmask of the tokens that keep the output
inside the language (~50 us per token for a 100k vocabulary, on one CPU core). The engine
asks for the masks of the constrained sequences right after launching the forward pass, so
on a GPU they are computed while the step runs; the masks are applied to the logits before
sampling, outside any captured graph, so decode graphs replay unchanged.
"""

from __future__ import annotations

import json

import llguidance
import numpy as np
import torch

from granite_runtime.spec.errors import RequestError

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
# JSON as the model should write it: compact separators keep outputs short and the same
# whether streamed or not; llguidance accepts any whitespace unless told otherwise.
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lark_string(text: str) -> str:
    return json.dumps(text)


# Keywords gkit passes to llguidance: what it implements (it refuses the rest of JSON
# Schema itself, naming them) and annotations that do not constrain. Any other key is a
# typo or an extension nobody enforces: refused rather than ignored.
KNOWN_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    # JSON Schema keywords llguidance does not implement: it names them in its refusal
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentEncoding",
    "contentMediaType",
}
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_VALUES = (
    "additionalProperties",
    "items",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
)


def check_keywords(schema, where: str, depth: int = 0) -> None:
    """Refuse a key no JSON Schema draft defines, naming it and where it is."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict) or depth > 64:
        raise RequestError(f"{where} is not a JSON schema object.")
    for key, value in schema.items():
        if key not in KNOWN_KEYWORDS:
            raise RequestError(
                f"{where}: '{key}' is not a JSON Schema keyword gkit enforces.",
                code="unsupported_schema",
            )
        if key in SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_keywords(sub, f"{where}.{key}.{name}", depth + 1)
        elif key in SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                check_keywords(sub, f"{where}.{key}[{i}]", depth + 1)
        elif key in SCHEMA_VALUES and isinstance(value, dict | bool):
            check_keywords(value, f"{where}.{key}", depth + 1)


def _tag(tokenizer, text: str) -> str:
    """A Lark terminal for a tag: llguidance names an added token as <tag>, not as text."""
    return text if tokenizer.token_to_id(text) is not None else _lark_string(text)


class GrammarCompiler:
    """One per served model: the tokenizer llguidance needs, built once (~1 s)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: list[int]) -> None:
        """`tokenizer`: the model's `tokenizers.Tokenizer`."""
        self.vocab_size = vocab_size
        try:
            self.tokenizer = llguidance.LLTokenizer(
                tokenizer.to_str(), n_vocab=vocab_size, eos_token=sorted(eos_ids) or None
            )
        except ValueError as bad:  # a tokenizer that does not fit the model's vocabulary
            raise RequestError(
                f"structured output is unavailable for this model: {bad}", 500, "model_error"
            ) from None
        self.open_tag, self.close_tag = _tag(tokenizer, TOOL_OPEN), _tag(tokenizer, TOOL_CLOSE)

    def _checked(self, grammar: str, what: str) -> str:
        # A warning is a keyword llguidance would ignore: refused too, never silently dropped.
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer
        )
        if failed or messages:
            raise RequestError(
                f"{what} is not supported: {messages[0].splitlines()[0][:300]}",
                code="unsupported_schema",
            )
        return grammar

    def json_schema(self, schema: dict, what: str = "response_format.json_schema") -> str:
        """The grammar of JSON that validates against `schema` (a JSON object)."""
        check_keywords(schema, what)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults=JSON_DEFAULTS
        )
        return self._checked(grammar, what)

    def tool_calls(self, functions: list[dict], required: bool, parallel: bool = True) -> str:
        """Granite's `<tool_call>` blocks, each naming one of `functions`.

        With `required` (tool_choice required or a named function) every function's
        arguments must validate against its parameters. Otherwise (auto with strict tools)
        plain text is allowed too, and only `strict` functions' arguments are constrained.
        `parallel` False allows a single call."""
        for f in functions:
            if required or f.get("strict"):
                check_keywords(f.get("parameters") or {}, f"tools.{f['name']}.parameters")
        calls = {
            "x-guidance": JSON_DEFAULTS,
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": f["name"]},
                        "arguments": (f.get("parameters") if required or f.get("strict") else None)
                        or {"type": "object"},
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for f in functions
            ],
        }
        lines = [
            "start: calls" if required else "start: calls | TEXT",
            f'call: {self.open_tag} "\\n" %json {json.dumps(calls)} "\\n" {self.close_tag}',
            'calls: call ("\\n" call)*' if parallel else "calls: call",
        ]
        if not required:  # plain text may not begin with "<": it is never a half-made call
            lines.append("TEXT: /[^<]([^\\x00]*)/")
        grammar = llguidance.grammar_from("lark", "\n".join(lines))
        return self._checked(grammar, "the tools' parameter schemas")

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        return llguidance.LLMatcher(self.tokenizer, grammar)


class MaskBuffer:
    """Fixed host buffers, one row per cache slot: llguidance's bitmask words, and the same
    unpacked into a forbidden-token row (pinned on CUDA). Unpacking on the host with numpy
    leaves the device one copy and one masked fill per step."""

    def __init__(self, slots: int, vocab_size: int, device: torch.device) -> None:
        pinned = device.type == "cuda"
        self.vocab_size = vocab_size
        self.bits = np.full((slots, (vocab_size + 31) // 32), -1, dtype=np.int32)
        self.forbidden = torch.zeros((slots, vocab_size), dtype=torch.bool, pin_memory=pinned)

    def fill(self, rows: list[tuple[int, llguidance.LLMatcher]]) -> None:
        """Compute each constrained row's mask (CPU); called while the step runs."""
        forbidden = self.forbidden.numpy()
        for slot, matcher in rows:
            words = self.bits[slot]
            matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: self.vocab_size]
            np.equal(bits, 0, out=forbidden[slot])

    def apply(self, logits: torch.Tensor, rows: list[int], slots: list[int]) -> torch.Tensor:
        """`logits` (B, V) with the tokens each constrained row forbids set to -inf."""
        device = logits.device
        one = slots[0] if len(slots) == 1 else None  # a view, not a gather, for one row
        forbidden = self.forbidden[one : one + 1] if one is not None else self.forbidden[slots]
        forbidden = forbidden.to(device, non_blocking=True)
        if forbidden.shape[-1] < logits.shape[-1]:  # padded vocabulary rows are never allowed
            pad = logits.shape[-1] - forbidden.shape[-1]
            forbidden = torch.nn.functional.pad(forbidden, (0, pad), value=True)
        if len(rows) == logits.shape[0]:  # every row constrained (batch 1): no gather
            return logits.masked_fill(forbidden, float("-inf"))
        index = torch.tensor(rows, device=device)
        masked = logits.index_select(0, index).masked_fill(forbidden, float("-inf"))
        return logits.index_copy(0, index, masked)
