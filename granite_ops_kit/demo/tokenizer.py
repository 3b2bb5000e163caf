"""A small byte-level BPE tokenizer in Granite's layout, built with `tokenizers`.

Granite 4.0 uses a GPT-4 style byte-level BPE with role tokens; ours has the same
pre-tokenizer family and the same special tokens, trained on a short embedded corpus so it
is a few kilobytes. Byte-level means every string round-trips, whatever the corpus covered.
"""

from __future__ import annotations

import json
from importlib import resources

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# The GPT-4 (cl100k) split pattern that Granite's tokenizer family uses.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

END_OF_TEXT = "<|end_of_text|>"
PAD = "<|pad|>"
START_OF_ROLE = "<|start_of_role|>"
END_OF_ROLE = "<|end_of_role|>"
MAX_VOCAB = 1024  # the embedded corpus yields about 900 tokens; a larger ask changes nothing
SPECIAL_TOKENS = [END_OF_TEXT, PAD, START_OF_ROLE, END_OF_ROLE]
# Added as ordinary (non-special) tokens, as in Granite: they appear in decoded text so a
# tool-call parser can find them.
MARKUP_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<tools>",
    "</tools>",
    "<tool_response>",
    "</tool_response>",
]

# Granite 4.0's chat layout: <|start_of_role|>ROLE<|end_of_role|>CONTENT<|end_of_text|>,
# tools listed in the system message inside <tools></tools>, calls answered as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call> (one block per call), tool
# results sent back in the `tool` role inside <tool_response></tool_response>.
CHAT_TEMPLATE = (
    "{%- set system = namespace(text='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system.text = messages[0]['content'] -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{%- set system.text = system.text ~ ('\\n\\n' if system.text else '') ~ "
    "'You are a helpful assistant with access to the following tools. When a tool is "
    "required, answer with one <tool_call></tool_call> block per call, each holding a JSON "
    'object with the keys "name" and "arguments".\\n\\n<tools>\' -%}'
    "{%- for tool in tools -%}"
    "{%- set system.text = system.text ~ '\\n' ~ (tool | tojson) -%}"
    "{%- endfor -%}"
    "{%- set system.text = system.text ~ '\\n</tools>' -%}"
    "{%- endif -%}"
    "{%- if system.text -%}"
    "{{- '<|start_of_role|>system<|end_of_role|>' ~ system.text ~ '<|end_of_text|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{- '<|start_of_role|>tool<|end_of_role|><tool_response>\\n' ~ message['content'] ~ "
    "'\\n</tool_response><|end_of_text|>\\n' -}}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|start_of_role|>assistant<|end_of_role|>' ~ (message['content'] or '') -}}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call.get('function') else call -%}"
    "{%- set args = fn['arguments'] -%}"
    "{{- '<tool_call>\\n{\"name\": ' ~ (fn['name'] | tojson) ~ ', \"arguments\": ' ~ "
    "(args if args is string else (args | tojson)) ~ '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|end_of_text|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|start_of_role|>' ~ message['role'] ~ '<|end_of_role|>' ~ message['content'] ~ "
    "'<|end_of_text|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_of_role|>assistant<|end_of_role|>' -}}"
    "{%- endif -%}"
)


def _corpus() -> str:
    return resources.files("granite_ops_kit.demo").joinpath("corpus.txt").read_text("utf-8")


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """Train the BPE on the embedded corpus; specials take the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKUP_TOKENS),
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus().splitlines(keepends=True), trainer=trainer)
    tok.add_tokens(MARKUP_TOKENS)
    return tok


def tokenizer_json(vocab_size: int) -> str:
    """tokenizer.json text, with keys sorted so the bytes do not depend on dict order."""
    data = json.loads(build_tokenizer(vocab_size).to_str())
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast and our runtime."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def special_token_ids(tok_json: str) -> dict[str, int]:
    """Ids of the special tokens in a built tokenizer.json."""
    tok = Tokenizer.from_str(tok_json)
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
