"""Evaluations: samplers on benchmark tasks, stored record by record, summarised with intervals."""

from ppl_ecmh.evaluation.experiment import EvalSettings, read_settings, run_eval
from ppl_ecmh.evaluation.store import RecordStore

__all__ = ["EvalSettings", "RecordStore", "read_settings", "run_eval"]
