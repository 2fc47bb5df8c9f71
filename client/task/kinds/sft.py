"""``sft``: instruction tuning of a causal LM. Conversations through the tokenizer's chat template, the loss on the
response (assistant) tokens only; scored by the token-weighted response NLL and perplexity on held-out
conversations, and by greedy generations for a fixed sample of held-out prompts (ROUGE-L, exact match)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from datasets import Dataset
from torch import nn
from torch.nn import functional
from transformers import PreTrainedTokenizerBase

from client.task.chat_format import IGNORE, encode_conversation, ensure_chat_template, last_response, prompt_ids
from client.task.columns import SFT_COLUMN_ROLES
from client.task.data import TaskData, split_heldout
from client.task.generation_scores import exact_match, rouge_l
from client.task.kinds.base import Evaluation
from client.task.models import load_causal_lm, load_tokenizer
from client.task.sft_data import user_conversations, wordnet_conversations

if TYPE_CHECKING:
    from client.task.kinds.base import Task
    from client.task.models import Quantized
    from client.task.spec import TaskSpec

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels: [batch, width], right-padded

MAX_EXP_ARGUMENT = math.log(sys.float_info.max)  # 709.78: exp of more overflows


def perplexity_of(nll: float) -> float:
    """exp(mean NLL per response token); infinite for a diverged model whose NLL passes 709.78, where exp
    overflows a float (the run goes on and reports it instead of stopping on an OverflowError)."""
    return math.exp(nll) if nll < MAX_EXP_ARGUMENT else math.inf


def conversations(spec: TaskSpec) -> Dataset:
    """The task's conversations (``messages``, ``category``): WordNet definitions or the user's data."""
    if spec.dataset == "wordnet":
        return wordnet_conversations(spec.topic_names, spec.per_topic)
    return user_conversations(spec.dataset, spec.data_columns)


def tokenized(data: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int, split: str) -> TaskData:
    """``data`` with ``input_ids`` and ``labels`` columns; conversations whose last response cannot fit
    ``max_length`` are dropped and their count logged (never trained on cut)."""
    ids, labels, keep = [], [], []
    for index, messages in enumerate(data.dataset["messages"]):
        encoded = encode_conversation(tokenizer, messages, max_length)
        if encoded is not None:
            ids.append(encoded.input_ids)
            labels.append(encoded.labels)
            keep.append(index)
    dropped = len(data.dataset) - len(keep)
    if dropped:
        log.warning("%s: %d of %d conversations dropped: their last response does not fit max-length=%d",
                    split, dropped, len(data.dataset), max_length)
    if not keep:
        raise ValueError(f"no {split} conversation fits max-length={max_length}: raise max-length")
    rows = data.dataset.select(keep).add_column("input_ids", ids).add_column("labels", labels)
    return replace(data, dataset=rows)


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Rows of ints as one [len(rows), longest] tensor, padded on the right with ``value``."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def response_loss_sum(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled (response) tokens of ``batch``, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]  # token t+1 is predicted from positions <= t
    loss = functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                    ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


@torch.no_grad()
def greedy_generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int, device: torch.device, batch_size: int = 8) -> list[str]:
    """Greedy continuations of the prompt token ids (``max_new_tokens`` at most), decoded without special
    tokens and stripped; prompts are left-padded in batches of ``batch_size`` so each ends where its answer
    starts."""
    model.eval()
    pad = tokenizer.pad_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=max_new_tokens, pad_token_id=pad,
                                   temperature=None, top_p=None, top_k=None)
        out += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in generated]
    return out


@dataclass
class SFTHead:
    """Batches of tokenized conversations, the response-token loss, and held-out scoring."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    eval_samples: int
    max_new_tokens: int
    eval_batch_size: int = 8

    def batches(self, dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Right-padded batches (pad tokens masked out and unlabelled) of ``dataset`` rows in ``order``."""
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            rows = dataset.select(order[start:start + batch_size])
            ids = rows["input_ids"]
            yield {"input_ids": pad_right(ids, pad), "labels": pad_right(rows["labels"], IGNORE),
                   "attention_mask": pad_right([[1] * len(r) for r in ids], 0)}

    def loss(self, task: Task, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy per response token of the batch."""
        batch = {k: v.to(task.device) for k, v in batch.items()}
        with task.autocast():
            total, count = response_loss_sum(task.model, batch)
        return total / max(count, 1)

    def generate(self, task: Task, prompts: Sequence[Sequence[int]]) -> list[str]:
        """Greedy answers of ``task.model`` to the prompt token ids."""
        with task.autocast():
            return greedy_generate(task.model, self.tokenizer, prompts, self.max_new_tokens, task.device,
                                   self.eval_batch_size)

    @torch.no_grad()
    def evaluate(self, task: Task, dataset: Dataset) -> Evaluation:
        """Response NLL per token and perplexity over all of ``dataset``; ROUGE-L and exact match of greedy
        generations for its first ``eval_samples`` conversations (the samples returned for a person to read)."""
        task.model.eval()
        total, tokens = 0.0, 0
        for batch in self.batches(dataset, range(len(dataset)), self.eval_batch_size):
            batch = {k: v.to(task.device) for k, v in batch.items()}
            with task.autocast():
                loss, count = response_loss_sum(task.model, batch)
            total, tokens = total + float(loss), tokens + count
        nll = total / tokens if tokens else math.nan
        metrics: dict[str, float] = {"nll": nll, "perplexity": perplexity_of(nll) if tokens else math.nan,
                                     "response_tokens": float(tokens), "examples": float(len(dataset))}
        sample = dataset.select(range(min(self.eval_samples, len(dataset))))
        samples: list[dict[str, Any]] = []
        if len(sample):
            messages = sample["messages"]
            prompts = [prompt_ids(self.tokenizer, m, self.max_length) for m in messages]
            generations = self.generate(task, prompts)
            for conversation, prompt, generation in zip(messages, prompts, generations, strict=True):
                reference = last_response(conversation)
                samples.append({"prompt": self.tokenizer.decode(prompt), "reference": reference,
                                "generation": generation, "rouge_l": rouge_l(generation, reference),
                                "exact_match": exact_match(generation, reference)})
            metrics["rouge_l"] = sum(s["rouge_l"] for s in samples) / len(samples)
            metrics["exact_match"] = sum(s["exact_match"] for s in samples) / len(samples)
        return Evaluation(metrics, samples)


class SFT:
    """Instruction tuning: loss on response tokens, judged by held-out response perplexity."""

    name: ClassVar[str] = "sft"
    primary_metric: ClassVar[str] = "perplexity"
    higher_is_better: ClassVar[bool] = False
    column_roles: ClassVar[tuple[str, ...]] = SFT_COLUMN_ROLES

    def load_splits(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase | None = None
                    ) -> tuple[TaskData, TaskData]:
        """Conversations split into (train, held-out), tokenized with the model's chat template."""
        tokenizer = tokenizer or sft_tokenizer(spec.model)
        rows = conversations(spec)
        data = TaskData(rows, partition_by="category" if any(rows["category"]) else "")
        train, heldout = split_heldout(data, spec.heldout, spec.seed)
        return (tokenized(train, tokenizer, spec.max_length, "train"),
                tokenized(heldout, tokenizer, spec.max_length, "held-out"))

    def load_base(self, spec: TaskSpec, train: TaskData, quantized: Quantized | None) -> nn.Module:
        """The causal LM."""
        return load_causal_lm(spec.model, quantized)

    def modules_to_save(self) -> list[str] | None:
        """Nothing beside the adapter."""
        return None

    def make_head(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, train: TaskData,
                  device: torch.device) -> SFTHead:
        """The SFT head for ``tokenizer`` (given the plain template when it has no chat template)."""
        ensure_chat_template(tokenizer)
        return SFTHead(tokenizer, spec.max_length, spec.eval_samples, spec.max_new_tokens)


def sft_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a chat template (the plain one where it has none)."""
    tokenizer = load_tokenizer(model)
    ensure_chat_template(tokenizer)
    return tokenizer
