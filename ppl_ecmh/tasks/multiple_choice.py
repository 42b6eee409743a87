"""GPQA (Diamond): four-way multiple choice, choices shuffled under a fixed seed, graded by letter.

The dataset's authors ask that it not be republished in plain text: load it from the gated Hugging
Face id (Idavidrein/gpqa, config gpqa_diamond) or from a local copy of its CSV.
"""

from __future__ import annotations

import random
import re

from ppl_ecmh.tasks.base import Problem, Task, first_present
from ppl_ecmh.tasks.math import last_boxed

LETTERS = "ABCD"
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([ABCD])\)?", re.IGNORECASE)


class GPQA(Task):
    name = "gpqa"
    default_source = "Idavidrein/gpqa"
    config = "gpqa_diamond"
    split = "train"

    def __init__(self, shuffle_seed: int = 0):
        self.shuffle_seed = shuffle_seed

    def to_problem(self, index, record):
        correct = str(first_present(record, ("Correct Answer",))).strip()
        wrong = [str(record[f"Incorrect Answer {i}"]).strip() for i in (1, 2, 3)]
        identifier = str(record.get("Record ID", index))
        choices = [correct] + wrong
        random.Random(f"{self.shuffle_seed}:{identifier}").shuffle(choices)  # same order on every run
        return Problem(identifier, str(first_present(record, ("Question",))).strip(),
                       LETTERS[choices.index(correct)], {"choices": choices})

    def prompt(self, problem, chat=True):
        options = "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, problem.metadata["choices"]))
        return (f"{problem.question}\n\n{options}\n\nPlease reason step by step, and put the letter of your final "
                "answer within \\boxed{}.")

    def extract(self, completion):
        boxed = last_boxed(completion)
        if boxed is not None:
            letter = re.fullmatch(r"\(?\s*(?:\\text\{)?([ABCD])\}?\s*\)?", boxed.strip())
            return letter.group(1) if letter else None
        found = _ANSWER_IS.findall(completion)
        return found[-1].upper() if found else None

    def is_correct(self, extracted, problem):
        return extracted == problem.answer
