"""Conversations to token ids with a loss mask on the responses: the tokenizer's chat template (or a plain one),
response (assistant) tokens labelled, the prompt truncated from the left when a conversation is too long.

The rendered conversation is cut into segments at each assistant turn's boundaries and every segment is
tokenized on its own, so the labelled tokens are exactly the tokenization of the responses (each with the
template's end-of-turn marker, which the model must learn to emit), and the prompt a model is asked to continue
at evaluation is exactly the prefix it was trained after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

IGNORE = -100  # the label of a token that carries no loss (PyTorch's and Hugging Face's convention)
# For tokenizers without a chat template: Alpaca's headers, the response closed by the EOS token.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
Message = dict[str, str]


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer that has no chat template the plain one (``PLAIN_TEMPLATE``), in place."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def segments(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_response) pieces, in order; a response is an assistant turn's
    content and the template's end-of-turn text up to the next whitespace. Trailing text after the last response
    is left out (it carries no loss). ValueError when the template is not prefix-stable (rendering the first
    turns does not give a prefix of rendering them all), since then no token boundary is well defined."""
    full = _render(tokenizer, messages, False)
    pieces: list[tuple[str, bool]] = []
    position = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], True)
        upto = _render(tokenizer, messages[:index + 1], False)
        if not (full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= position):
            raise ValueError("the tokenizer's chat template renders a conversation differently from its first turns "
                             "(not prefix-stable), so responses cannot be located; give the tokenizer a template "
                             "that is, or remove it to use fedsqueeze's plain template")
        response = upto[len(prompt):].rstrip()
        pieces += [(full[position:len(prompt)], False), (response, True)]
        position = len(prompt) + len(response)
    return [(text, is_response) for text, is_response in pieces if text]


@dataclass(frozen=True)
class Encoded:
    """One conversation as model input: ``input_ids`` and ``labels`` (IGNORE where no loss) of equal length."""

    input_ids: list[int]
    labels: list[int]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], max_length: int
                        ) -> Encoded | None:
    """Token ids with every assistant turn's tokens as labels. Longer than ``max_length``: the oldest tokens
    (the start of the prompt) are cut; None when even the last response cannot fit after one prompt token."""
    ids: list[int] = []
    labels: list[int] = []
    last_response_start = 0
    for text, is_response in segments(tokenizer, messages):
        piece = _ids(tokenizer, text)
        if is_response:
            last_response_start = len(ids)
            labels += piece
        else:
            labels += [IGNORE] * len(piece)
        ids += piece
    if len(ids) - last_response_start + 1 > max_length:
        return None
    return Encoded(ids[-max_length:], labels[-max_length:])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], max_length: int) -> list[int]:
    """The tokens a model continues to answer the last assistant turn: the conversation before it and the
    template's generation cue, its oldest tokens cut to ``max_length``."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    pieces = segments(tokenizer, messages[:last + 1])
    ids = [token for text, _ in pieces[:-1] for token in _ids(tokenizer, text)]  # as in training, piece by piece
    return ids[-max_length:]


def last_response(messages: Sequence[Message]) -> str:
    """The content of the last assistant turn: the reference a generation is scored against."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
