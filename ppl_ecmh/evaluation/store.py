"""An append-only JSONL store of evaluation records, one per (sampler, seed, problem).

Every record is written as one line and flushed to disk before the next batch starts, so a run
killed at any moment loses at most the batch in flight. A final line cut short by such a kill is
not a record: reading skips it and the next append drops it. Complete records are never rewritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

KEY_FIELDS = ("sampler", "seed", "problem_id")


def record_key(record: dict) -> tuple:
    return tuple(record[field] for field in KEY_FIELDS)


class RecordStore:
    def __init__(self, path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """All complete records, the first of any duplicate key kept."""
        if not self.path.exists():
            return []
        records, seen = [], set()
        lines = self.path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # the line a killed run was writing
                    continue
                raise ValueError(f"{self.path}:{number}: not a JSON record") from None
            if record_key(record) not in seen:
                seen.add(record_key(record))
                records.append(record)
        return records

    def done(self) -> set[tuple]:
        return {record_key(record) for record in self.read()}

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
