"""Build a task from a TaskSpec: the base model (with its seeded adapter, or fully trainable), its tokenizer and
its kind's head, on the spec's device."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from client.task.adapters import trainable_names, wrap_with_adapter
from client.task.kinds.base import Evaluation, Head, TaskData, TaskKind
from client.task.kinds.registry import kind_of
from client.task.models import Quantized, load_tokenizer
from client.task.spec import TaskSpec


def load_splits(spec: TaskSpec, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[TaskData, TaskData]:
    """The (train, held-out) split every party derives identically from the spec, as its kind prepares it."""
    return kind_of(spec.kind).load_splits(spec, tokenizer)


@dataclass
class Task:
    """A built task: the model (a PeftModel when ``spec.trainable == "lora"``, else fully trainable), its
    tokenizer, the device, and its kind's ``head`` (batches, loss, evaluation)."""

    spec: TaskSpec
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    kind: TaskKind
    head: Head

    def batches(self, dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[Any]:
        """The head's batches of ``dataset`` rows in ``order``."""
        return self.head.batches(dataset, order, batch_size)

    def loss(self, batch: Any) -> torch.Tensor:
        """The training loss of the current ``model`` on ``batch``."""
        return self.head.loss(self, batch)

    def evaluate(self, dataset: Dataset) -> Evaluation:
        """The kind's scores of the current ``model`` on ``dataset``."""
        return self.head.evaluate(self, dataset)

    def _named_trainable(self) -> dict[str, torch.Tensor]:
        if self.spec.trainable == "lora":  # what trains: PEFT also saves seeded projections and index sets
            state = get_peft_model_state_dict(self.model)
            return {name: state[name] for name in trainable_names(self.model, state)}
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
            self.tokenizer.save_pretrained(out_dir / "adapter")  # with its chat template: ready to answer prompts
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


def build_task(spec: TaskSpec, train: TaskData) -> Task:
    """Load the base model of the spec's kind, add the seeded LoRA adapter (unless every parameter trains), and
    set up the kind's head; ``train`` is the training split (a classifier's label names come from it).

    On CUDA in bf16 the frozen base is kept in bf16 (or loaded 8/4-bit with ``spec.quantization``) while what
    trains stays fp32; on the CPU every weight is fp32.
    """
    kind = kind_of(spec.kind)
    device = resolve_device(spec.device)
    check_quantization(spec.quantization, device)
    frozen_dtype = base_weight_dtype(spec, device)
    quantized = Quantized(spec.quantization, frozen_dtype, device) if spec.quantization != "none" else None
    tokenizer = load_tokenizer(spec.model)
    base = kind.load_base(spec, train, quantized)
    model = (wrap_with_adapter(base, spec.adapter, spec.lora, seed=spec.seed, modules_to_save=kind.modules_to_save())
             if spec.trainable == "lora" else base)
    head = kind.make_head(spec, tokenizer, train, device)
    if frozen_dtype != torch.float32 or quantized is not None:
        keep_frozen_in(model, frozen_dtype)  # before the move: half the bytes cross to the device
    if quantized is None:
        model.to(device)  # a quantised base was loaded onto its device; bitsandbytes weights stay put
    return Task(spec, model, tokenizer, device, kind, head)
