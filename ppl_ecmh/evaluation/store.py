"""An append-only JSONL store of records, one per key: (sampler, seed, problem) for evaluations,
and the results directory that holds an evaluation's store beside its settings.

Every record is written as one line and flushed to disk before the next one, so a run killed at
any moment loses at most the work in flight. A final line cut short by such a kill is not a
record: reading skips it and the next append drops it. Complete records are never rewritten. A
damaged line anywhere else stops reading with an error that offers `repair`, which moves such
lines to a quarantine file beside the store and keeps every intact record. A store given the
value fields its records must have (an evaluation's: `EVAL_FIELDS`) counts a record that lacks
one, or holds a value of another type, as damaged too, and its error names the record and field:
a report never summarises a record it cannot read whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Iterable

from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.evaluation.settings import UNCOMPARED_SETTINGS, EvalSettings

KEY_FIELDS = ("sampler", "seed", "problem_id")
# field -> the JSON types an evaluation record's value may have (a bool is not a number here)
EVAL_FIELDS = {"sampler": (str,), "seed": (int,), "problem_id": (str,), "correct": (bool,),
               "tokens_generated": (int,), "completion_length": (int,), "alpha_log_p": (int, float),
               "wall_time_s": (int, float), "acceptance": (int, float)}
QUARANTINE_SUFFIX = ".quarantine"
RECORDS, SETTINGS, LOCK = "records.jsonl", "settings.json", ".lock"  # a results directory's files


def record_key(record: dict, fields: tuple[str, ...] = KEY_FIELDS) -> tuple:
    return tuple(record[field] for field in fields)


def _parse(line: str, fields: tuple[str, ...]) -> dict | None:
    """The record on a line, or None when the line is not one (bad JSON, or lacks the key fields)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and all(field in record for field in fields) else None


def damage(record: dict, value_fields: dict) -> str | None:
    """What is wrong with a record's values, naming the field; None when nothing is."""
    for field, types in value_fields.items():
        if field not in record:
            return f"lacks `{field}`"
        value = record[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"has `{field}` = {value!r}, not a {' or '.join(t.__name__ for t in types)}"
    return None


class RecordStore:
    """Records keyed by `key_fields` (an evaluation's by default)."""

    def __init__(self, path, key_fields: tuple[str, ...] = KEY_FIELDS, value_fields: dict | None = None):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.value_fields = value_fields or {}

    def _intact(self, line: str) -> bool:
        record = _parse(line, self.key_fields)
        return record is not None and damage(record, self.value_fields) is None

    def read(self) -> list[dict]:
        """All complete records, the first of any duplicate key kept."""
        if not self.path.exists():
            return []
        records, seen = [], set()
        lines = self.path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _parse(line, self.key_fields)
            if record is None:
                if number == len(lines):  # the line a killed run was writing
                    continue
                raise PplEcmhError(f"{self.path}:{number}: not a record; {self._repair_hint}")
            if problem := damage(record, self.value_fields):
                key = ", ".join(map(str, record_key(record, self.key_fields)))
                raise PplEcmhError(f"{self.path}:{number}: the record ({key}) {problem}; {self._repair_hint}")
            key = record_key(record, self.key_fields)
            if key not in seen:
                seen.add(key)
                records.append(record)
        return records

    @property
    def _repair_hint(self) -> str:
        return (f"`ppl-ecmh eval` with --repair moves damaged lines to {self.quarantine_path.name} and keeps "
                "the intact ones")

    @property
    def quarantine_path(self) -> Path:
        return self.path.with_name(self.path.stem + QUARANTINE_SUFFIX + self.path.suffix)

    def repair(self) -> int:
        """Move every damaged line (the last one too) to the quarantine file, keep the rest in
        order; return how many lines moved. The store is replaced atomically."""
        if not self.path.exists():
            return 0
        lines = [line for line in self.path.read_text(encoding="utf-8").split("\n") if line.strip()]
        damaged = [line for line in lines if not self._intact(line)]
        if not damaged:
            return 0
        with open(self.quarantine_path, "a", encoding="utf-8") as quarantine:
            quarantine.write("".join(line + "\n" for line in damaged))
        intact = "".join(line + "\n" for line in lines if self._intact(line))
        replace_atomically(self.path, intact)
        return len(damaged)

    def done(self) -> set[tuple]:
        return {record_key(record, self.key_fields) for record in self.read()}

    def append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            handle.seek(0)
            content = handle.read()
            if content and not content.endswith(b"\n"):  # a killed run's partial line
                handle.truncate(content.rfind(b"\n") + 1)
            handle.write(lines.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def replace_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never half written."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def open_results(out_dir, settings: EvalSettings) -> RecordStore:
    """The record store of `out_dir`, after checking it was made with the same settings (and
    recording them, for a new directory)."""
    out = results_directory(out_dir)
    if stored_settings(out) is None:
        out.mkdir(parents=True, exist_ok=True)
        write_settings(out, settings)
    check_settings(out, settings)
    return RecordStore(out / RECORDS, value_fields=EVAL_FIELDS)


def check_settings(out: Path, settings: EvalSettings) -> None:
    """PplEcmhError when `out` holds an evaluation with other settings (speed settings aside)."""
    stored = stored_settings(out)
    if stored is None:
        return
    as_json = lambda fields: json.loads(json.dumps(fields))  # tuples as lists, as settings.json has them
    stored, current = as_json(EvalSettings.stored_fields(stored)), as_json(dataclasses.asdict(settings))
    differing = {key: (stored.get(key), value) for key, value in current.items()
                 if stored.get(key) != value and key not in UNCOMPARED_SETTINGS}
    if differing:
        detail = ", ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in differing.items())
        raise PplEcmhError(f"{out} holds an evaluation with other settings ({detail}); use another --out")


def write_settings(out: Path, settings: EvalSettings, rope_scaling: dict | None = None) -> None:
    """The settings, and the RoPE scaling the loaded model ran with where it has one (LongRoPE's
    factors, or YaRN stretched by `stretch_context`): derived, so not compared on a resume."""
    stored = dataclasses.asdict(settings) | ({"rope_scaling": rope_scaling} if rope_scaling else {})
    replace_atomically(out / SETTINGS, json.dumps(stored, indent=2))


def stored_settings(out: Path) -> dict | None:
    path = out / SETTINGS
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PplEcmhError(f"{path} cannot be read ({error}); remove it to start the directory afresh") from None
    if not isinstance(stored, dict):
        raise PplEcmhError(f"{path} is not a settings object; remove it to start the directory afresh")
    return stored


def results_directory(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PplEcmhError(f"--out {out} is a file, not a directory")
    return out


@contextlib.contextmanager
def locked(out_dir):
    """Hold DIR/.lock while a run writes to DIR: a second run on the same directory is refused
    instead of doing all the work again. The lock goes with the process that holds it."""
    out = results_directory(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise PplEcmhError(f"{out} is in use by another evaluation (process {holder}); wait for it to end "
                               "or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def read_settings(out_dir) -> EvalSettings:
    stored = stored_settings(results_directory(out_dir))
    if stored is None:
        raise PplEcmhError(f"{out_dir} is not an evaluation directory (no {SETTINGS})")
    try:
        return EvalSettings(**EvalSettings.stored_fields(stored))
    except (TypeError, ValueError) as error:
        raise PplEcmhError(f"{Path(out_dir) / SETTINGS}: {error}") from None
