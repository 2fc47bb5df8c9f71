"""Data loading: fortune files, user files, held-out split and client partitions."""

from pathlib import Path

import pytest

from client.task.data import DataNotFoundError, load_files, load_fortunes, read_fortune_file, split_heldout
from client.task.partition import client_partition


def _fortunes(tmp_path: Path) -> Path:
    (tmp_path / "food").write_text("Eat your\n  greens.\n%\nPie is good.\n%\n%\nCake.\n")
    (tmp_path / "law").write_text("Objection!\n%\nThe court is in session.\n")
    return tmp_path


def test_fortune_files_become_labelled_quotes(tmp_path: Path) -> None:
    assert read_fortune_file(_fortunes(tmp_path) / "food") == ["Eat your greens.", "Pie is good.", "Cake."]
    data = load_fortunes(("food", "law"), directory=tmp_path, per_topic=2)
    assert data.dataset["label"] == [0, 0, 1, 1] and data.label_names == ("food", "law")
    with pytest.raises(DataNotFoundError, match="'sports' not found"):
        load_fortunes(("sports",), directory=tmp_path)


def test_user_csv_with_string_labels(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("review,stars\ngreat stuff,good\nawful,bad\nfine,good\n")
    data = load_files(str(tmp_path / "d.csv"), text_column="review", label_column="stars")
    assert data.label_names == ("bad", "good") and data.dataset["label"] == [1, 0, 1]
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_files(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="no column 'text'"):
        load_files(str(tmp_path / "d.csv"))


def test_split_and_partitions_are_disjoint_and_deterministic(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("\n%\n".join(f"quote {i}" for i in range(40)))
    data = load_fortunes(("t",), directory=tmp_path)
    train, heldout = split_heldout(data, 10, seed=1)
    assert not set(train.dataset["text"]) & set(heldout.dataset["text"])
    again, _ = split_heldout(data, 10, seed=1)
    assert train.dataset["text"] == again.dataset["text"]
    parts = [client_partition(train.dataset, i, 3, kind="iid", alpha=1.0, seed=0)["text"] for i in range(3)]
    assert sum(len(p) for p in parts) == 30 and not set(parts[0]) & set(parts[1])
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        client_partition(train.dataset, 3, 3, kind="iid", alpha=1.0, seed=0)
