"""``fedsqueeze evaluate``: lm-eval tasks on an exported adapter and on its base alone, offline, with fedsqueeze's
own WordNet task; bad input is one line and exit 2 before any model loads."""

import json
import math
from pathlib import Path

import pytest

from simulations.cli import main
from simulations.lm_eval_tasks import TASKS_DIR
from simulations.lm_eval_tasks.wordnet_gloss import CHOICES, DOMAINS, PER_DOMAIN, TRAINED_PER_DOMAIN, build_items

TASK = "fedsqueeze_wordnet_gloss"


def test_the_gloss_items_are_well_formed_deterministic_and_never_trained_on() -> None:
    from client.task.wordnet import load_definitions

    items = build_items()
    rows = load_definitions(DOMAINS)
    definitions = dict(zip(rows["word"], rows["definition"], strict=True))
    trained = set(load_definitions(DOMAINS, TRAINED_PER_DOMAIN)["word"])  # what the default SFT preset trains on
    assert len(items) == PER_DOMAIN * len(DOMAINS)
    for item in items:
        choices = item["choices"]
        assert len(choices) == CHOICES == len(set(choices))
        assert choices[item["label"]] == definitions[item["word"]]
        assert sum(choice == definitions[item["word"]] for choice in choices) == 1
        assert item["word"] not in trained and item["word"] in item["question"]
    assert build_items() == items
    assert build_items(seed=1) != items
    assert {item["label"] for item in items} == set(range(CHOICES))
    assert len({item["category"] for item in items[:40]}) > 1  # --limit 40 mixes the domains


def test_lm_eval_builds_the_local_task_offline_from_the_items() -> None:
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load([TASK])["tasks"][TASK]
    docs = task.test_docs()
    first = build_items()[0]
    assert len(docs) == PER_DOMAIN * len(DOMAINS)
    assert task.doc_to_text(docs[0]) == f"{first['question']}\nDefinition:"
    assert task.doc_to_choice(docs[0]) == first["choices"]
    assert task.doc_to_target(docs[0]) == first["label"]


def _fake_adapter(directory: Path) -> Path:
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "no-such-model"}))
    return directory


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import client.task.exported

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(client.task.exported, "load_adapter", refuse)


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--adapter", "{tmp}/missing", "--tasks", TASK], "adapter directory '{tmp}/missing' does not exist"),
    (["--adapter", "{tmp}", "--tasks", TASK], "holds no PEFT adapter"),
    (["--adapter", "{adapter}", "--tasks", "fedsqueeze_wordnet_glos"],
     "unknown lm-eval task 'fedsqueeze_wordnet_glos' (did you mean 'fedsqueeze_wordnet_gloss'?)"),
    (["--adapter", "{adapter}", "--tasks", f"{TASK},mmlu_stemm"], "unknown lm-eval task 'mmlu_stemm'"),
    (["--adapter", "{adapter}", "--limit", "0"], "--limit must be at least 1, got 0"),
    (["--adapter", "{adapter}", "--tasks", " , "], "--tasks names no task"),
])
def test_bad_input_is_one_line_and_exit_2_before_a_model_loads(arguments: list[str], expected: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               no_model_loads: None) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    argv = [a.format(tmp=tmp_path, adapter=adapter) for a in arguments]
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsqueeze: error: "), err
    assert expected.format(tmp=tmp_path) in err[0]


def test_lm_evals_own_tasks_pass_the_check() -> None:
    from simulations.lm_evaluation import check_tasks

    check_tasks([TASK, "mmlu", "hellaswag"])
    with pytest.raises(ValueError, match="lm-eval ls tasks"):
        check_tasks(["no_such_task"])
    with pytest.raises(ValueError, match="'humaneval' runs code the model writes"):
        check_tasks(["humaneval"])


def test_the_table_shows_a_group_not_its_members_and_a_tags_tasks() -> None:
    from simulations.lm_evaluation import render_table, shown_tasks

    names = ["mmlu", "mmlu_stem", "mmlu_astronomy", "arc_easy", "arc_challenge"]
    result = {"tasks": ["mmlu", "ai2_arc"], "model": "m", "adapter_dir": "a", "wall_s": 1.0,
              "subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_astronomy"]},
              "samples": {"mmlu_astronomy": 10, "arc_easy": 10, "arc_challenge": 10},
              "base": {name: {"acc": 0.5, "acc_stderr": 0.1} for name in names},
              "adapter": {name: {"acc": 0.75, "acc_stderr": 0.1} for name in names},
              "difference": {"mmlu": {"acc": 0.25, "acc_stderr": None},
                             "arc_easy": {"acc": 0.25, "acc_stderr": 0.05}}}
    assert shown_tasks(result) == ["mmlu", "arc_easy", "arc_challenge"]
    rows = [line.split() for line in render_table(result).splitlines()]
    assert ["mmlu", "acc", "0.500", "±", "0.100", "0.750", "±", "0.100", "+0.250"] in rows  # a group: no paired stderr
    assert ["arc_easy", "acc", "0.500", "±", "0.100", "0.750", "±", "0.100", "+0.250", "±", "0.050"] in rows
    assert ["arc_challenge", "acc", "0.500", "±", "0.100", "0.750", "±", "0.100", "-"] in rows
    assert not any(row[0].startswith("mmlu_") for row in rows)


def _perturbed_lora(base_dir: str, out: Path) -> Path:
    """A LoRA adapter on the tiny model with seeded random factors (LoRA starts as a no-op; this one is not),
    saved with the tokenizer as a run's export is."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def _bare_base_scores(base_dir: str, limit: int) -> dict[str, float]:
    """The local task scored by lm-eval directly on the base model, no adapter anywhere."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from client.task.models import load_tokenizer

    lm = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(base_dir), tokenizer=load_tokenizer(base_dir),
              batch_size=8)
    results = simple_evaluate(model=lm, tasks=[TASK], limit=limit, log_samples=False,
                              task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False))
    assert results is not None
    return {key.split(",")[0]: value for key, value in results["results"][TASK].items() if key.endswith(",none")}


@pytest.mark.slow
def test_evaluate_scores_base_and_adapter_on_the_tiny_model(tiny_causal_lm: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    adapter = _perturbed_lora(tiny_causal_lm, tmp_path / "adapter")
    out = tmp_path / "results" / "evaluate.json"
    assert main(["evaluate", "--adapter", str(adapter), "--tasks", TASK, "--limit", "40", "--json",
                 "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert result["tasks"] == [TASK] and result["model"] == tiny_causal_lm and result["samples"] == {TASK: 40}
    base, adapted = result["base"][TASK], result["adapter"][TASK]
    for scores in (base, adapted):
        for metric in ("acc", "acc_norm"):
            assert 0.0 <= scores[metric] <= 1.0 and scores[metric + "_stderr"] > 0.0
    # The base arm is the bare base model (the adapter switched off), scored exactly as lm-eval scores it alone.
    direct = _bare_base_scores(tiny_causal_lm, limit=40)
    assert {m: base[m] for m in direct} == pytest.approx(direct, abs=1e-12)
    assert (adapted["acc"], adapted["acc_norm"]) != (base["acc"], base["acc_norm"])  # the adapter changes answers
    difference = result["difference"][TASK]
    assert math.isclose(difference["acc"], adapted["acc"] - base["acc"], abs_tol=1e-12)
    assert difference["acc_stderr"] is not None and difference["acc_stderr"] >= 0.0
