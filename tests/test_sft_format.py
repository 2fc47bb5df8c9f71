"""SFT formatting: the loss mask covers exactly the response tokens (Alpaca, chat single- and multi-turn,
truncation, a tokenizer without a chat template), and instruction data in every accepted shape loads."""

import copy
import json
from pathlib import Path

import pytest
from datasets import Dataset

from client.task.chat_format import IGNORE, PLAIN_TEMPLATE, encode_conversation, ensure_chat_template, prompt_ids
from client.task.columns import SFT_COLUMN_ROLES as COLUMN_ROLES
from client.task.columns import parse_columns
from client.task.partition import client_partition
from client.task.sft_data import user_conversations
from client.task.wordnet import parse_synset


def _labelled_runs(encoded) -> list[list[int]]:
    """The labelled tokens as maximal runs of consecutive positions."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return runs + ([current] if current else [])


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_alpaca_example_labels_exactly_the_response_and_its_end_of_turn(smollm_tokenizer) -> None:
    messages = [{"role": "user", "content": "Define the word 'cat' in one short phrase."},
                {"role": "assistant", "content": "a small domesticated feline"}]
    encoded = encode_conversation(smollm_tokenizer, messages, max_length=256)
    assert _labelled_runs(encoded) == [_ids(smollm_tokenizer, "a small domesticated feline<|im_end|>")]
    # The pieces tokenize as the whole rendered conversation does, and the prompt is what generation continues.
    rendered = smollm_tokenizer.apply_chat_template(messages, tokenize=False)
    assert encoded.input_ids == _ids(smollm_tokenizer, rendered.rstrip())
    prompt = prompt_ids(smollm_tokenizer, messages, 256)
    assert encoded.input_ids[:len(prompt)] == prompt and encoded.labels[len(prompt)] != IGNORE
    assert all(label == IGNORE for label in encoded.labels[:len(prompt)])


def test_multi_turn_chat_labels_every_assistant_turn_and_nothing_else(smollm_tokenizer) -> None:
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green, or red."}]
    encoded = encode_conversation(smollm_tokenizer, messages, max_length=256)
    assert _labelled_runs(encoded) == [_ids(smollm_tokenizer, "Blue.<|im_end|>"),
                                       _ids(smollm_tokenizer, "Green, or red.<|im_end|>")]
    labelled = sum(label != IGNORE for label in encoded.labels)
    assert labelled == len(_ids(smollm_tokenizer, "Blue.<|im_end|>")) + len(_ids(smollm_tokenizer,
                                                                                 "Green, or red.<|im_end|>"))
    assert "You answer briefly." in smollm_tokenizer.decode(encoded.input_ids)


def test_truncation_cuts_the_prompt_never_the_response_and_drops_what_cannot_fit(smollm_tokenizer) -> None:
    response = "a very short answer"
    messages = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": response}]
    encoded = encode_conversation(smollm_tokenizer, messages, max_length=40)
    expected = _ids(smollm_tokenizer, response + "<|im_end|>")
    assert len(encoded.input_ids) == 40 and _labelled_runs(encoded) == [expected]
    assert encoded.input_ids[-len(expected):] == expected  # the prompt's start went, the response stayed whole
    assert encode_conversation(smollm_tokenizer, messages, max_length=len(expected)) is None
    assert encode_conversation(smollm_tokenizer, messages, max_length=len(expected) + 1) is not None


def test_a_tokenizer_without_chat_template_gets_the_plain_template(smollm_tokenizer) -> None:
    tokenizer = copy.deepcopy(smollm_tokenizer)
    tokenizer.chat_template = None
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == PLAIN_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "Hi there."}]
    encoded = encode_conversation(tokenizer, messages, max_length=128)
    assert _labelled_runs(encoded) == [_ids(tokenizer, "Hi there." + tokenizer.eos_token)]
    assert tokenizer.decode(prompt_ids(tokenizer, messages, 128)) == "Be brief.\n\n### Instruction:\nSay hi.\n\n" \
                                                                     "### Response:\n"


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_every_accepted_shape_and_source_loads_as_conversations(tmp_path: Path) -> None:
    alpaca = _write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Add.", "input": "2 and 3", "output": "5", "category": "math"},
        {"instruction": "Greet.", "input": "", "output": "Hello.", "category": "chat"}])
    data = user_conversations(alpaca)
    assert data["messages"][0] == [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant",
                                                                                   "content": "5"}]
    assert data["messages"][1][0]["content"] == "Greet." and data["category"] == ["math", "chat"]
    chat = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
        {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]}])
    assert [t["role"] for t in user_conversations(chat)["messages"][0]] == ["system", "user", "assistant", "user",
                                                                            "assistant"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("question,answer,topic\nWhy?,Because.,life\n")
    loaded = user_conversations(str(pairs), "prompt=question,completion=answer,category=topic")
    assert loaded["messages"][0][1] == {"role": "assistant", "content": "Because."} and loaded["category"] == ["life"]
    saved = tmp_path / "saved"
    Dataset.from_dict({"prompt": ["p"], "completion": ["c"]}).save_to_disk(str(saved))
    assert user_conversations(str(saved))["messages"][0][0]["content"] == "p"
    parquet = tmp_path / "data.parquet"
    Dataset.from_dict({"instruction": ["i"], "output": ["o"]}).to_parquet(str(parquet))
    assert user_conversations(str(parquet))["category"] == [""]


@pytest.mark.parametrize(("rows", "columns", "message"), [
    ([{"question": "q", "reply": "r"}], "", r"has columns \['question', 'reply'\], none of the SFT shapes"),
    ([{"messages": "hello"}], "", "row 0: messages must be a non-empty list"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "", "row 0: role 'robot' is not one of"),
    ([{"messages": [{"role": "user", "content": "x"}]}], "", "row 0: the conversation must end with"),
    ([{"instruction": "i", "output": ""}], "", "must end with a non-empty assistant turn"),
    ([{"instruction": "i", "output": "o"}], "answer=output", "data-columns role 'answer'"),
])
def test_bad_instruction_data_is_refused_in_one_line(tmp_path: Path, rows, columns, message) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message) as caught:
        user_conversations(path, columns)
    assert "\n" not in str(caught.value)


def test_column_mapping_syntax() -> None:
    assert parse_columns(" instruction = q , output=a", COLUMN_ROLES) == {"instruction": "q", "output": "a"}
    with pytest.raises(ValueError, match="not ROLE=COLUMN"):
        parse_columns("instruction", COLUMN_ROLES)


def test_wordnet_lines_parse_to_domain_words_and_definition() -> None:
    line = ('02084071 05 n 02 dog 0 domestic_dog 0 002 @ 02083346 n 0000 | a member of the genus Canis; '
            '"the dog barked all night"  \n')
    assert parse_synset(line) == ("noun.animal", ["dog", "domestic dog"], "a member of the genus Canis")
    assert parse_synset("  1 This software and database is being provided\n") is None


def test_domain_partitioner_gives_each_client_whole_domains() -> None:
    categories = ["b"] * 10 + ["a"] * 10 + ["c"] * 10 + ["d"] * 10 + ["e"] * 10
    train = Dataset.from_dict({"category": categories, "i": list(range(50))})
    parts = [client_partition(train, p, 3, kind="domain", alpha=1.0, seed=0, by="category") for p in range(3)]
    held = [set(part["category"]) for part in parts]
    assert held == [{"a", "b"}, {"c"}, {"d", "e"}]  # sorted values, cut at near-equal row counts
    assert sum(len(part) for part in parts) == 50 and not set.intersection(*held)
    with pytest.raises(ValueError, match="at least one 'category' value per client"):
        client_partition(train, 0, 6, kind="domain", alpha=1.0, seed=0, by="category")
    with pytest.raises(ValueError, match="this data has none"):
        client_partition(train, 0, 2, kind="dirichlet", alpha=1.0, seed=0, by="")


def test_a_diverged_models_perplexity_is_infinite_not_an_overflow_that_stops_the_run() -> None:
    import math

    from client.task.kinds.sft import perplexity_of

    assert perplexity_of(1.0) == pytest.approx(math.e)
    assert perplexity_of(709.0) == pytest.approx(math.exp(709.0))
    assert perplexity_of(3192.0) == math.inf  # what Ferret at 485,000x compression reached (math.exp raises)
