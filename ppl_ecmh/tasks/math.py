"""Math tasks: MATH500 and AIME (boxed answers, checked with math-verify) and GSM8K (numbers).

Prompt format as in the power-sampling papers: the problem, then "Please reason step by step, and
put your final answer within \\boxed{}."
"""

from __future__ import annotations

import re

from ppl_ecmh.tasks.base import Problem, Task, first_present

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in text, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0:
        return None
    depth = 0
    for index in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[open_brace + 1 : index].strip()
    return None


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def math_equal(given: str, reference: str) -> bool:
    """Mathematical equivalence by math-verify (\\frac{1}{2} = 0.5 = 1/2), reference first."""
    from math_verify import parse, verify

    def wrap(text: str) -> str:  # currency signs and thin spaces carry no value: drop them
        text = text.replace("\\$", "").replace("\\!", "")
        return text if "$" in text or "\\boxed" in text else f"${text}$"

    try:
        return bool(verify(parse(wrap(reference)), parse(wrap(given))))
    except Exception:  # math-verify raises on unparsable input: that is a wrong answer
        return False


class BoxedMathTask(Task):
    def prompt(self, problem: Problem, chat=True) -> str:
        return f"{problem.question}\n{BOXED_INSTRUCTION}"

    def extract(self, completion: str) -> str | None:
        return last_boxed(completion)

    def is_correct(self, extracted, problem):
        return math_equal(extracted, problem.answer)


class MATH500(BoxedMathTask):
    name = "math500"
    default_source = "HuggingFaceH4/MATH-500"

    def to_problem(self, index, record):
        return Problem(str(record.get("unique_id", index)), record["problem"], str(record["answer"]),
                       {k: record[k] for k in ("subject", "level") if k in record})


class AIME(BoxedMathTask):
    """AIME: integer answers 0..999, compared as integers."""

    name = "aime"
    default_source = "HuggingFaceH4/aime_2024"
    split = "train"

    def to_problem(self, index, record):
        return Problem(str(record.get("id", index)), first_present(record, ("problem", "question")),
                       str(int(first_present(record, ("answer",)))))

    def is_correct(self, extracted, problem):
        number = last_number(extracted)
        return number is not None and re.fullmatch(r"-?\d+", number) is not None and int(number) == int(problem.answer)


class GSM8K(BoxedMathTask):
    """GSM8K: the reference follows '####'; a completion's answer is its last boxed value or, failing
    that, its last number; compared as numbers."""

    name = "gsm8k"
    default_source = "openai/gsm8k"
    config = "main"

    def to_problem(self, index, record):
        answer = str(record["answer"]).split("####")[-1].strip().replace(",", "")
        return Problem(str(index), record["question"], answer)

    def extract(self, completion):
        boxed = last_boxed(completion)
        return last_number(boxed) if boxed is not None else last_number(completion)

    def is_correct(self, extracted, problem):
        try:
            return abs(float(extracted) - float(problem.answer)) < 1e-6
        except ValueError:
            return False
