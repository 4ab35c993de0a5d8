"""Build the tiny default model's byte-level BPE tokenizer and its think-aware chat template.

Real A.X K1 checkpoints bring their own `tokenizer.json` and chat template; this one exists so the
embedded stack needs no hub download. It is trained with the `tokenizers` library on a small
corpus in the model's five languages (ko, en, zh, ja, es), and the training is deterministic.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

END_OF_TEXT = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = [END_OF_TEXT, TURN_START, TURN_END, THINK_START, THINK_END]

# ChatML turns. With thinking on, the generation prompt opens a think block the model closes itself;
# with thinking off it is pre-filled empty, so the model answers directly. Earlier assistant turns keep
# only their answers, as hybrid-reasoning models expect.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{%- if message['role'] == 'assistant' and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}"
    "{{- '<think>\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def training_corpus() -> list[str]:
    text = (resources.files("serving") / "data" / "tokenizer-corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(directory: Path, vocab_size: int = 2048) -> int:
    """Train the tokenizer, save it in HF format (`tokenizer.json` and config) and return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=TURN_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[TURN_START, THINK_START, THINK_END],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(directory)
    return tokenizer.get_vocab_size()
