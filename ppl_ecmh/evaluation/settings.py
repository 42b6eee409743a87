"""An evaluation's settings: everything that decides a record's content except the sampler and
the seed. A results directory records them once, in settings.json (`evaluation.store`)."""

from __future__ import annotations

import dataclasses

from ppl_ecmh.registry import SamplerOptions, SamplerSpec, get_sampler
from ppl_ecmh.runner import DEFAULT_WIDTH
from ppl_ecmh.tasks import get_task
from ppl_ecmh.validation import check_alpha, check_positive_int

# may differ on a resume: how fast records come, and where the settings came from, not the records' law
UNCOMPARED_SETTINGS = ("batch_size", "recipe", "overrides")
# the spellings of settings.json files written before the sampler options had one spelling
FORMER_NAMES = {"mcmc_steps": "num_mcmc_steps", "tmc_candidates": "num_candidates", "tmc_rollouts": "num_rollouts",
                "tmc_horizon": "horizon"}
DERIVED_SETTINGS = ("rope_scaling",)  # recorded beside the settings, from the loaded model


@dataclasses.dataclass(frozen=True)
class EvalSettings(SamplerOptions):
    """The task, the model, the problems, the target and the samplers' options (`SamplerOptions`,
    under the same names). A results directory holds one EvalSettings; samplers and seeds can be
    added to it later."""

    task: str
    model: str = "smollm2-135m"
    source: str | None = None  # dataset file or hub id; None: the task's default
    where: dict | None = None  # keep problems whose metadata match, e.g. {"level": "1"} (MATH500)
    problems: list | None = None  # keep these problem ids alone, e.g. ["HumanEval/53"]
    limit: int | None = None  # the first `limit` problems (after `where` and `shuffle_seed`)
    shuffle_seed: int | None = None  # shuffle the problems with this seed before `limit`: a seeded subset
    alpha: float = 4.0
    max_new_tokens: int = 256
    mh_steps: int = 8  # random-cut / entropy-cut: MH steps after the initial completion
    chat: bool = True
    # rows decoded side by side: engine slots, or lockstep rows (`problems_per_batch`); None: the
    # widest that fits an accelerator (`engine.memory`), DEFAULT_WIDTH on a CPU
    batch_size: int | None = None
    dtype: str = "float32"
    stretch_context: bool = False  # YaRN past an unscaled model's context (`ppl_ecmh.lm.rope`)
    recipe: str | None = None  # the published recipe these settings came from (`evaluation.recipes`)
    overrides: list | None = None  # the recipe's settings that explicit options replaced

    def __post_init__(self):
        super().__post_init__()
        get_task(self.task)
        check_alpha(self.alpha)
        check_positive_int("max_new_tokens", self.max_new_tokens)
        check_positive_int("mh_steps", self.mh_steps)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        if self.limit is not None:
            check_positive_int("limit", self.limit)

    @classmethod
    def stored_fields(cls, stored: dict) -> dict:
        """settings.json's fields under today's names, with the defaults of those it lacks (it
        was written before they existed), without what was derived from the loaded model."""
        renamed = {FORMER_NAMES.get(key, key): value for key, value in stored.items() if key not in DERIVED_SETTINGS}
        defaults = {field.name: field.default for field in dataclasses.fields(cls)
                    if field.default is not dataclasses.MISSING}
        return defaults | renamed

    def spec(self, sampler: str) -> SamplerSpec:
        return SamplerSpec(sampler, **self.sampler_options())

    def problems_per_batch(self, sampler: str) -> int:
        """Problems a lockstep batch holds: as many as fit `batch_size` rows, with Power-SMC's
        particles and TMC's look-ahead rollouts each a row of their problem."""
        return max(1, (self.batch_size or DEFAULT_WIDTH) // get_sampler(sampler).rows(self.spec(sampler)))

    def num_draws(self, sampler: str) -> int:
        """Independent samplers: the initial completion only; MH: `mh_steps` steps; blockwise and
        its presets: one draw per block, the published schedule."""
        return get_sampler(sampler).draws_in_eval(self.max_new_tokens, self.mh_steps, self.block_size)
