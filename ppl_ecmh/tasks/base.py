"""What every task provides: problems from a source, a prompt per problem, and a grader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from ppl_ecmh.errors import PplEcmhError


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # the reference answer, as text
    metadata: dict = dataclasses.field(default_factory=dict)


class Grade(NamedTuple):
    answer: str | None  # the final answer extracted from the completion (for code: the program)
    correct: bool
    execution: str | None = None  # graders that run code: `sandbox.Verdict.outcome`


class Task:
    """Subclasses set `name`, `default_source` (a Hugging Face dataset id) and `split`, and implement
    `to_problem`, `prompt`, `extract` and `is_correct` (or `grade` itself, where a grade says more
    than right or wrong)."""

    name: str
    default_source: str
    split: str = "test"
    config: str | None = None  # the Hugging Face dataset configuration, where it has several

    def load(self, source: str | None = None, limit: int | None = None) -> list[Problem]:
        """Problems from a local file (JSONL, JSON, CSV, Parquet) or a Hugging Face dataset id."""
        source = source or self.default_source
        records = read_records(source, self.split, self.config)
        problems = []
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise PplEcmhError(f"{source}: record {index + 1} is a {type(record).__name__}, not an object "
                                   f"with the {self.name} task's fields")
            try:
                problems.append(self.to_problem(index, record))
            except KeyError as error:
                raise PplEcmhError(f"{source}: record {index + 1} lacks the field {error} that the {self.name} "
                                   f"task reads (it has {', '.join(sorted(record)) or 'none'})") from None
        return problems[:limit] if limit is not None else problems

    def to_problem(self, index: int, record: dict) -> Problem:
        raise NotImplementedError

    def prompt(self, problem: Problem, chat: bool = True) -> str:
        """The prompt text; `chat` says whether the model's chat template will wrap it."""
        raise NotImplementedError

    def extract(self, completion: str) -> str | None:
        """The final answer a completion gives, or None if it gives none."""
        raise NotImplementedError

    def is_correct(self, extracted: str | None, problem: Problem) -> bool:
        raise NotImplementedError

    def grade(self, completion: str, problem: Problem) -> Grade:
        extracted = self.extract(completion)
        return Grade(extracted, extracted is not None and self.is_correct(extracted, problem))


def read_records(source: str, split: str = "test", config: str | None = None) -> list[dict[str, Any]]:
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise PplEcmhError(f"no dataset file {source} (and it is not a Hugging Face dataset id)")
    try:
        import datasets
    except ImportError:
        raise PplEcmhError(
            f"loading {source!r} from the Hugging Face hub needs the `datasets` package "
            "(pip install datasets); or pass a local JSONL/CSV/Parquet file"
        ) from None
    try:
        return [dict(row) for row in datasets.load_dataset(source, config, split=split)]
    except Exception as error:
        raise PplEcmhError(f"cannot load dataset {source!r} split {split!r}: {error}") from None


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            import gzip

            opener = gzip.open if suffix.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, list) else list(data.values())[0]
        if suffix in (".csv", ".parquet"):
            import pandas

            frame = pandas.read_csv(path) if suffix == ".csv" else pandas.read_parquet(path)
            return frame.to_dict(orient="records")
    except (OSError, ValueError, ImportError) as error:
        raise PplEcmhError(f"cannot read {path}: {error}") from None
    raise PplEcmhError(f"unsupported dataset file type {path.name}: use .jsonl, .json, .csv or .parquet")


def first_present(record: dict, keys: Iterable[str]):
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    raise PplEcmhError(f"dataset record has none of the fields {list(keys)}: {sorted(record)}")
