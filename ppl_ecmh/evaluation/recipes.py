"""The papers' published settings as named recipes for `ppl-ecmh eval --recipe NAME`.

ECMH (Zhou, Mehrotra, Liu, arXiv 2605.30327) runs the block-wise schedule of Karan & Du (arXiv
2510.14901) with the entropy-jump cut (beta = 4) and tau = 1/alpha; per task: MATH500 T_max 3072,
B 192, alpha 4; HumanEval T_max 3072, B 192, alpha 5; GPQA Diamond and AIME T_max 6144, B 384,
alpha 4; N_MCMC 10 throughout. Karan & Du: uniform cut, alpha 4, T_max 3072, B 192, N_MCMC 10.
Both papers' code truncates target and proposal to the top 50 tokens; here that is `as_published`,
beside the exact default. A model whose context the recipe's T_max exceeds (Qwen2.5-Math-7B's
4,096) is stretched with YaRN, as the ECMH code does. A base model gets the task's plain prompt, an instruct model its chat
template. Explicit options override a recipe, and the results directory's settings record the
recipe and what overrode it.
"""

from __future__ import annotations

import dataclasses

PUBLISHED_TOP_K = 50


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    paper: str
    task: str
    sampler: str  # the preset: ecmh (entropy-jump cut, beta 4) or karan-du (uniform cut)
    alpha: float
    max_new_tokens: int
    block_size: int
    num_mcmc_steps: int = 10

    def settings(self, as_published: bool = False) -> dict:
        """The EvalSettings fields this recipe sets (tau stays None: 1/alpha)."""
        return dict(task=self.task, alpha=self.alpha, tau=None, max_new_tokens=self.max_new_tokens,
                    block_size=self.block_size, num_mcmc_steps=self.num_mcmc_steps, stretch_context=True,
                    top_k=PUBLISHED_TOP_K if as_published else None)

    def decoded_tokens_bound(self) -> int:
        """Tokens one chain decodes when every completion runs to T_max and each MH step
        regenerates half of what exists (a uniform cut): sum over blocks k of B + N * k * B / 2,
        about N * T^2 / (4B)."""
        blocks = -(-self.max_new_tokens // self.block_size)
        return sum(self.block_size + self.num_mcmc_steps * k * self.block_size // 2 for k in range(1, blocks + 1))


RECIPES = {recipe.name: recipe for recipe in (
    Recipe("ecmh-math500", "ECMH", "math500", "ecmh", 4.0, 3072, 192),
    Recipe("ecmh-humaneval", "ECMH", "humaneval", "ecmh", 5.0, 3072, 192),
    Recipe("ecmh-gpqa", "ECMH", "gpqa", "ecmh", 4.0, 6144, 384),
    Recipe("ecmh-aime", "ECMH", "aime", "ecmh", 4.0, 6144, 384),
    Recipe("karan-du-math500", "Karan & Du", "math500", "karan-du", 4.0, 3072, 192),
    Recipe("karan-du-humaneval", "Karan & Du", "humaneval", "karan-du", 4.0, 3072, 192),
    Recipe("karan-du-gpqa", "Karan & Du", "gpqa", "karan-du", 4.0, 3072, 192),
)}


def is_instruct(model: str) -> bool:
    """Whether a model id names an instruction-tuned model (its prompts take the chat template)."""
    from ppl_ecmh.lm.catalog import PAPER_MODELS
    from ppl_ecmh.lm.registry import EMBEDDED_MODELS

    if model in PAPER_MODELS:
        return PAPER_MODELS[model].instruct
    if model in EMBEDDED_MODELS:
        return True  # both embedded models are instruct builds
    return any(word in model.lower() for word in ("instruct", "-chat", "-it"))
