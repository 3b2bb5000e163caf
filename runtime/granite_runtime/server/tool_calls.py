"""Granite's tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks.

Turned into OpenAI `tool_calls`, whole (`parse_tool_calls`) or while streaming
(`ToolCallStream`), which holds back text that may be the start of a block so no partial
tag ever reaches the client as content. A block whose JSON does not parse stays content:
nothing the model wrote is dropped.
"""

from __future__ import annotations

import json
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def _call(block: str) -> dict | None:
    try:
        data = json.loads(block)
    except (ValueError, RecursionError):  # not JSON, a number past the digit limit, too deep
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": data["name"],
            "arguments": args if isinstance(args, str) else json.dumps(args),
        },
    }


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content outside the blocks or None, the calls in order)."""
    stream = ToolCallStream()
    events = stream.feed(text) + stream.finish()
    content = "".join(e for kind, e in events if kind == "content").strip()
    calls = [e for kind, e in events if kind == "tool_call"]
    return (content or None), calls


def _partial_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallStream:
    """Feed text deltas; get ("content", str) and ("tool_call", dict) events back."""

    def __init__(self) -> None:
        self.buffer = ""
        self.in_block = False

    def feed(self, delta: str) -> list[tuple[str, object]]:
        self.buffer += delta
        events: list[tuple[str, object]] = []
        while True:
            if self.in_block:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    return events
                block, self.buffer = self.buffer[:end], self.buffer[end + len(CLOSE) :]
                self.in_block = False
                call = _call(block.strip())
                events.append(("tool_call", call) if call else ("content", OPEN + block + CLOSE))
                continue
            start = self.buffer.find(OPEN)
            if start >= 0:
                if start:
                    events.append(("content", self.buffer[:start]))
                self.buffer, self.in_block = self.buffer[start + len(OPEN) :], True
                continue
            keep = _partial_prefix(self.buffer, OPEN)
            text = self.buffer[: len(self.buffer) - keep]
            if text:
                events.append(("content", text))
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return events

    def finish(self) -> list[tuple[str, object]]:
        """End of generation: an unterminated block is parsed if it is whole JSON."""
        rest, self.buffer = self.buffer, ""
        if not rest:
            return []
        if self.in_block:
            self.in_block = False
            call = _call(rest.strip())
            return [("tool_call", call)] if call else [("content", OPEN + rest)]
        return [("content", rest)]
