"""``prompt-classification``: a causal LM reads a prompt and scores one label token after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from client.task.data import TaskData
from client.task.kinds.classification import Batch, ClassifierHead, LabelledTextKind
from client.task.models import load_causal_lm

if TYPE_CHECKING:
    from client.task.models import Quantized
    from client.task.spec import TaskSpec

PROMPT_PREFIX = "Classify the topic of this quote as one of: {labels}.\nQuote: "
PROMPT_SUFFIX = "\nTopic:"


def prompt_encoder(tokenizer: PreTrainedTokenizerBase, label_names: tuple[str, ...], max_length: int
                   ) -> Callable[[list[str]], Batch]:
    """Texts to left-padded prompts: the instruction, the quote cut to fit ``max_length``, the "Topic:" cue."""
    prefix = tokenizer(PROMPT_PREFIX.format(labels=", ".join(label_names)), add_special_tokens=False).input_ids
    suffix = tokenizer(PROMPT_SUFFIX, add_special_tokens=False).input_ids
    budget = max(1, max_length - len(prefix) - len(suffix))

    def encode(texts: list[str]) -> Batch:
        # Truncate the quote, never the instruction or the "Topic:" cue the label token follows.
        rows = [prefix + tokenizer(t, add_special_tokens=False).input_ids[:budget] + suffix for t in texts]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    return encode


def label_token_ids(tokenizer: PreTrainedTokenizerBase, label_names: tuple[str, ...]) -> list[int]:
    """The first token of " <label>" for each label; ValueError when two labels share it."""
    ids = [tokenizer(" " + name, add_special_tokens=False).input_ids[0] for name in label_names]
    if len(set(ids)) != len(ids):
        raise ValueError(f"labels {label_names} do not start with distinct tokens; rename them")
    return ids


class PromptClassification(LabelledTextKind):
    """The causal LM's next-token logits over the label tokens are the class logits."""

    name: ClassVar[str] = "prompt-classification"

    def load_base(self, spec: TaskSpec, train: TaskData, quantized: Quantized | None) -> nn.Module:
        """The causal LM."""
        return load_causal_lm(spec.model, quantized)

    def modules_to_save(self) -> list[str] | None:
        """Nothing beside the adapter: the LM head already scores the label tokens."""
        return None

    def make_head(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, train: TaskData,
                  device: torch.device) -> ClassifierHead:
        """Prompts in, label-token logits out."""
        label_ids = torch.tensor(label_token_ids(tokenizer, train.label_names), device=device)

        def class_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
            return out.logits[:, -1, :].index_select(-1, label_ids).float()

        return ClassifierHead(train.label_names, prompt_encoder(tokenizer, train.label_names, spec.max_length),
                              class_logits)
