"""``encoder-classification``: a text encoder, mean-pooled, with a fresh linear head."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from client.task.data import TaskData
from client.task.kinds.classification import Batch, ClassifierHead, LabelledTextKind
from client.task.models import load_encoder_classifier

if TYPE_CHECKING:
    from client.task.models import Quantized
    from client.task.spec import TaskSpec


class EncoderClassification(LabelledTextKind):
    """Mean-pooled encoder states through a seeded linear head are the class logits."""

    name: ClassVar[str] = "encoder-classification"

    def load_base(self, spec: TaskSpec, train: TaskData, quantized: Quantized | None) -> nn.Module:
        """The encoder with its classification head (seeded, so every party builds the same one)."""
        return load_encoder_classifier(spec.model, len(train.label_names), spec.seed, quantized)

    def modules_to_save(self) -> list[str] | None:
        """The fresh head trains in full next to the adapter."""
        return ["head"]

    def make_head(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, train: TaskData,
                  device: torch.device) -> ClassifierHead:
        """Right-truncated, padded texts in, head logits out."""

        def encode(texts: list[str]) -> Batch:
            out = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

        def class_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()

        return ClassifierHead(train.label_names, encode, class_logits)
