"""Build a task from a TaskSpec: the LoRA-wrapped model, its batching and its class logits."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from client.task.data import LabelledText, load_files, load_finefoods, load_fortunes, split_heldout
from client.task.models import Quantized, load_causal_lm, load_encoder_classifier, load_tokenizer, wrap_with_lora
from client.task.spec import TaskSpec

PROMPT_PREFIX = "Classify the topic of this quote as one of: {labels}.\nQuote: "
PROMPT_SUFFIX = "\nTopic:"


def load_splits(spec: TaskSpec) -> tuple[LabelledText, LabelledText]:
    """The (train, held-out) split every party derives identically from the spec."""
    if spec.dataset == "fortunes":
        data = load_fortunes(spec.topic_names, per_topic=spec.per_topic)
    elif spec.dataset == "finefoods":
        data = load_finefoods()
    else:
        data = load_files(spec.dataset)
    return split_heldout(data, spec.heldout, spec.seed)


@dataclass
class Task:
    """A model (LoRA-wrapped, or fully trainable) and how to turn texts into class logits with it."""

    spec: TaskSpec
    model: torch.nn.Module  # a PeftModel when spec.trainable == "lora"
    tokenizer: PreTrainedTokenizerBase
    label_names: tuple[str, ...]
    device: torch.device
    class_logits: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    encode: Callable[[list[str]], dict[str, torch.Tensor]]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits [batch, num_labels] in fp32 from the current ``model``."""
        return self.class_logits(self.model, batch)

    def _named_trainable(self) -> dict[str, torch.Tensor]:
        if self.spec.trainable == "lora":
            return get_peft_model_state_dict(self.model)
        return dict(self.model.named_parameters())

    def trainable_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of what trains (PEFT adapter names, or every parameter): the update's layout."""
        return {name: tuple(tensor.shape) for name, tensor in self._named_trainable().items()}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What trains (the LoRA adapter, or every parameter), as detached fp32 copies on CPU."""
        return {name: tensor.detach().to("cpu", torch.float32).clone()
                for name, tensor in self._named_trainable().items()}

    def trainable_delta(self, start: dict[str, torch.Tensor], *, on_device: bool = False) -> dict[str, torch.Tensor]:
        """What trains now minus ``start`` (fp32), without an intermediate copy of the model: on the CPU, or with
        ``on_device`` on the task's device, so that a codec can compress it there (the same bits either way)."""
        current = self._named_trainable()
        if on_device:
            return {name: current[name].detach().to(torch.float32) - start[name].to(self.device) for name in start}
        return {name: current[name].detach().to("cpu", torch.float32) - start[name] for name in start}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Overwrite what trains; names and shapes must match exactly."""
        current = self._named_trainable()
        if set(state) != set(current):
            missing, extra = sorted(set(current) - set(state)), sorted(set(state) - set(current))
            raise ValueError(f"trainable state mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(current[name].shape):
                raise ValueError(f"trainable tensor '{name}' has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(current[name].shape)}")
        if self.spec.trainable == "lora":
            set_peft_model_state_dict(self.model, state)
            return
        with torch.no_grad():
            for name, parameter in current.items():
                parameter.copy_(state[name])

    def save(self, out_dir: Path) -> Path:
        """Write what was trained: ``out_dir/adapter`` in PEFT format, or ``out_dir/model`` (full parameters,
        Hugging Face format where the model has one, else ``model.safetensors``). Returns the directory."""
        if self.spec.trainable == "lora":
            self.model.save_pretrained(out_dir / "adapter")
            return out_dir / "adapter"
        target = out_dir / "model"
        if hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(target)
            self.tokenizer.save_pretrained(target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            save_file({name: t.detach().contiguous() for name, t in self.model.state_dict().items()},
                      str(target / "model.safetensors"))
        return target

    def autocast(self) -> torch.autocast:
        """bf16 autocast when the spec asks for it (or ``auto`` finds native bf16), else a disabled context."""
        enabled = resolve_precision(self.spec.precision, self.device) == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls in hardware (CUDA with bf16, or a CPU with AVX-512/AMX bf16).

    Without it, CPU autocast emulates bf16 and runs an order of magnitude slower than fp32 (17x measured on an
    AVX2-only EPYC).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``bf16`` or ``fp32``: ``auto`` picks bf16 only where the device runs it natively."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def base_weight_dtype(spec: TaskSpec, device: torch.device) -> torch.dtype:
    """The dtype the frozen base weights are kept in: bf16 for a LoRA task that trains on CUDA in bf16 (autocast
    casts them to bf16 for every matmul anyway, so keeping them so halves their memory and traffic), else fp32.

    What trains stays fp32 (and so do AdamW's state and the update). The CPU keeps fp32 weights: its bf16 path is
    autocast alone, and the server and the clients on CPU must compute as before.
    """
    if spec.trainable == "lora" and device.type == "cuda" and resolve_precision(spec.precision, device) == "bf16":
        return torch.bfloat16
    return torch.float32


def keep_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast the floating-point parameters that do not train to ``dtype`` and those that train to fp32, in place
    (buffers such as rotary frequencies are left alone; quantised integer weights too). Returns how many
    parameters changed dtype."""
    changed = 0
    for parameter in model.parameters():
        if not parameter.is_floating_point():
            continue
        wanted = torch.float32 if parameter.requires_grad else dtype
        if parameter.dtype != wanted:
            parameter.data = parameter.data.to(wanted)
            changed += 1
    return changed


def check_quantization(quantization: str, device: torch.device) -> None:
    """Raise ValueError naming what is missing when ``quantization`` cannot run here: bitsandbytes quantises
    only on CUDA and must be importable."""
    if quantization == "none":
        return
    if device.type != "cuda":
        raise ValueError(f"quantization '{quantization}' needs a CUDA device, but this task runs on '{device}' "
                         "(set device=cuda or quantization=none)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"quantization '{quantization}' needs the bitsandbytes package, which is not installed "
                         "(pip install bitsandbytes, or set quantization=none)")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA request is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available on this node")
    return device


def _prompt_encoder(tokenizer: PreTrainedTokenizerBase, label_names: tuple[str, ...],
                    max_length: int) -> Callable[[list[str]], dict[str, torch.Tensor]]:
    prefix = tokenizer(PROMPT_PREFIX.format(labels=", ".join(label_names)), add_special_tokens=False).input_ids
    suffix = tokenizer(PROMPT_SUFFIX, add_special_tokens=False).input_ids
    budget = max(1, max_length - len(prefix) - len(suffix))

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        # Truncate the quote, never the instruction or the "Topic:" cue the label token follows.
        rows = [prefix + tokenizer(t, add_special_tokens=False).input_ids[:budget] + suffix for t in texts]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    return encode


def _label_token_ids(tokenizer: PreTrainedTokenizerBase, label_names: tuple[str, ...]) -> list[int]:
    ids = [tokenizer(" " + name, add_special_tokens=False).input_ids[0] for name in label_names]
    if len(set(ids)) != len(ids):
        raise ValueError(f"labels {label_names} do not start with distinct tokens; rename them")
    return ids


def build_task(spec: TaskSpec, label_names: tuple[str, ...]) -> Task:
    """Load the base model, add the seeded LoRA adapter (unless every parameter trains), set up batching.

    On CUDA in bf16 the frozen base is kept in bf16 (or loaded 8/4-bit with ``spec.quantization``) while what
    trains stays fp32; on the CPU every weight is fp32.
    """
    device = resolve_device(spec.device)
    check_quantization(spec.quantization, device)
    frozen_dtype = base_weight_dtype(spec, device)
    quantized = Quantized(spec.quantization, frozen_dtype, device) if spec.quantization != "none" else None
    tokenizer = load_tokenizer(spec.model)
    if spec.kind == "prompt-classification":
        base = load_causal_lm(spec.model, quantized)
        model = wrap_with_lora(base, spec.lora, seed=spec.seed) if spec.trainable == "lora" else base
        encode = _prompt_encoder(tokenizer, label_names, spec.max_length)
        label_ids = torch.tensor(_label_token_ids(tokenizer, label_names), device=device)

        def class_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
            return out.logits[:, -1, :].index_select(-1, label_ids).float()
    else:
        base = load_encoder_classifier(spec.model, len(label_names), spec.seed, quantized)
        model = (wrap_with_lora(base, spec.lora, seed=spec.seed, modules_to_save=["head"])
                 if spec.trainable == "lora" else base)

        def encode(texts: list[str]) -> dict[str, torch.Tensor]:
            out = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

        def class_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()

    if frozen_dtype != torch.float32 or quantized is not None:
        keep_frozen_in(model, frozen_dtype)  # before the move: half the bytes cross to the device
    if quantized is None:
        model.to(device)  # a quantised base was loaded onto its device; bitsandbytes weights stay put
    return Task(spec, model, tokenizer, label_names, device, class_logits, encode)


def batches(dataset: Dataset, order: list[int], batch_size: int) -> list[tuple[list[str], torch.Tensor]]:
    """Cut ``dataset`` rows in ``order`` into (texts, labels) batches."""
    out = []
    for start in range(0, len(order), batch_size):
        rows = dataset.select(order[start:start + batch_size])
        out.append((list(rows["text"]), torch.tensor(rows["label"], dtype=torch.long)))
    return out
