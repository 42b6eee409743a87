"""Evaluations: samplers on benchmark tasks, stored record by record, summarised with intervals."""

from ppl_ecmh.evaluation.experiment import run_eval
from ppl_ecmh.evaluation.settings import EvalSettings
from ppl_ecmh.evaluation.store import RecordStore, read_settings

__all__ = ["EvalSettings", "RecordStore", "read_settings", "run_eval"]
