"""The continuous-batching engine (DESIGN section 7): the same laws as the lockstep kernels, draws
keyed by work (not by slot, queue order or interruption), and caches that never go stale."""

import collections
import dataclasses
import functools

import jax
import numpy as np
import pytest

from ppl_ecmh.engine import Engine, Schedule, WorkItem, chain_key
from ppl_ecmh.engine import scheduler
from ppl_ecmh.engine import slots as slot_ops
from ppl_ecmh.lm import generation, toy, transformer
from ppl_ecmh.samplers import cuts
from tests.parallel_check import tiny_model
from tests.exact import SEEDS, Comparison, assert_exact_at_every_seed, assert_rejected_at_every_seed, exact_draws

PROBLEM = toy.random_tree_problem(seed=1)  # entropy jumps: every cut's correction term matters
# The statistical tests below run hundreds of slots with `narrow=False`: narrowing the drain
# compiles the loop for every narrower width, and it leaves records unchanged
# (test_the_drain_narrows_the_batch_and_counts_only_the_slots_it_had).
CUTS = {
    "uniform": cuts.Uniform(),
    "entropy": cuts.Entropy(beta=0.5),
    "entropy_jump": cuts.EntropyJump(power=4.0),
    "mixture": cuts.Mixture(cuts.EntropyJump(power=4.0), eps=0.2),
}


def completion(tokens, length) -> tuple[int, ...]:
    return tuple(int(v) for v in tokens[:length])


def run_from_exact(schedule: Schedule, alpha: float, num_chains=2000, width=None, seed=0):
    """Chains started at exact pi_alpha draws and run on the engine: every draw of every chain
    [chain][draw], pi_alpha, and the mean acceptance. By default every chain has a slot (one
    admission, a handful of compiles): a chain's records do not depend on the slot count
    (test_records_do_not_depend_on_slot_count_queue_order_or_interruption), so neither does their
    law; one test below still refills fewer slots many times."""
    starts, pi = exact_draws(PROBLEM, alpha, num_chains, seed)
    lengths = np.asarray(generation.completion_length(PROBLEM.lm, starts))
    items = [WorkItem(PROBLEM.prompt, chain_key(seed, "exactness", chain, 0), chain, completion(row, n))
             for chain, (row, n) in enumerate(zip(np.asarray(starts), lengths))]
    engine = Engine(PROBLEM.lm, schedule, width=width or num_chains, prompt_block=len(PROBLEM.prompt), narrow=False)
    results = sorted(engine.run(items), key=lambda r: r.item.tag)
    assert [r.item.tag for r in results] == list(range(num_chains))
    draws = [[completion(tokens, n) for tokens, n in zip(r.tokens, r.length)] for r in results]
    acceptance = np.mean([r.steps["accepted"][1:].mean() for r in results])
    return draws, pi, acceptance


def suffix_schedule(cut_name: str, alpha: float, steps=10, drop_cut_ratio=False) -> Schedule:
    schedule = Schedule.suffix_mh(PROBLEM.max_new_tokens, steps, cut=CUTS[cut_name], alpha=alpha, tau=1 / alpha)
    return dataclasses.replace(schedule, drop_cut_ratio=drop_cut_ratio)


@pytest.mark.slow
@pytest.mark.parametrize("cut_name,alpha,width", [("uniform", 1.0, None), ("uniform", 4.0, 256), ("entropy", 2.0, None),
                                                  ("entropy_jump", 4.0, None), ("mixture", 4.0, None)])
def test_engine_leaves_power_distribution_invariant(cut_name, alpha, width):
    """All 10 draws of each chain, judged by the ESS of the completions' indicators (about 3 to 5
    of every 10 draws here), at every seed; uniform at alpha 4 in 256 slots, refilled many times."""
    def run(seed):
        draws, pi, acceptance = run_from_exact(suffix_schedule(cut_name, alpha), alpha, width=width, seed=seed)
        assert 0.05 < acceptance <= 1.0  # the chains moved
        return Comparison(draws, pi)

    assert_exact_at_every_seed(run, f"{cut_name} alpha={alpha}")


@pytest.mark.slow
@pytest.mark.parametrize("cut_name", ["uniform", "entropy_jump"])
def test_engine_without_cut_ratio_is_rejected(cut_name):
    """The last draws after 10 steps at alpha 2: TV to pi about 0.2 for the uniform cut and 0.3
    for the entropy jump, against a bound near 0.05, at every seed (at alpha 4 the wrong kernel
    needs 30 steps to be rejected decisively, tests/test_exactness.py)."""
    def run(seed):
        draws, pi, _ = run_from_exact(suffix_schedule(cut_name, 2.0, drop_cut_ratio=True), 2.0, seed=seed)
        return Comparison([chain[-1] for chain in draws], pi)

    assert_rejected_at_every_seed(run, cut_name)


@pytest.mark.slow
def test_engine_blockwise_final_stage_reaches_power_distribution():
    """The whole block-wise schedule from the prompt (B=2, T=4, 100 MH steps a stage), as the
    lockstep test in test_exactness does: its last stage is an MH chain on pi_alpha."""
    alpha = 2.0
    schedule = Schedule.blockwise(PROBLEM.max_new_tokens, 2, 100, cut=CUTS["uniform"], alpha=alpha, tau=1 / alpha)

    def run(seed):
        items = [WorkItem(PROBLEM.prompt, chain_key(seed, "blockwise", chain, 0), chain) for chain in range(2000)]
        results = Engine(PROBLEM.lm, schedule, width=len(items), prompt_block=1, narrow=False).run(items)
        return Comparison([completion(r.tokens[-1], r.length[-1]) for r in results], PROBLEM.power_distribution(alpha))

    assert_exact_at_every_seed(run)


@pytest.mark.slow
def test_ancestral_chains_on_the_engine_draw_from_the_model():
    """Independent schedule at tau 1 is ancestral sampling: exact for p (pi at alpha 1)."""
    schedule = Schedule.independent(PROBLEM.max_new_tokens, alpha=1.0, tau=1.0)

    def run(seed):
        items = [WorkItem(PROBLEM.prompt, chain_key(seed, "ancestral", chain, 0), chain) for chain in range(2000)]
        results = list(Engine(PROBLEM.lm, schedule, width=len(items), prompt_block=1, narrow=False).run(items))
        assert all(r.tokens.shape[0] == 1 and r.steps["accepted"].all() for r in results)
        return Comparison([completion(r.tokens[0], r.length[0]) for r in results], PROBLEM.power_distribution(1.0))

    assert_exact_at_every_seed(run)


def chains(schedule, prompts, width, order=None, seed=0, lm=PROBLEM.lm):
    """Every (prompt, chain) pair's result by tag, run in the given order of work items."""
    items = [WorkItem(prompt, chain_key(seed, "keyed", problem, chain), (problem, chain))
             for problem, prompt in enumerate(prompts) for chain in range(3)]
    items = [items[i] for i in order] if order is not None else items
    block = max(len(p) for p in prompts)
    return {r.item.tag: r for r in Engine(lm, schedule, width=width, prompt_block=block).run(items)}


def assert_same_records(a: dict, b: dict):
    assert a.keys() == b.keys()
    for tag in a:
        np.testing.assert_array_equal(a[tag].tokens, b[tag].tokens, err_msg=str(tag))
        np.testing.assert_array_equal(a[tag].length, b[tag].length)
        np.testing.assert_array_equal(a[tag].log_target, b[tag].log_target)
        for name in a[tag].steps:
            np.testing.assert_array_equal(a[tag].steps[name], b[tag].steps[name], err_msg=name)
        for name in a[tag].stats:
            np.testing.assert_array_equal(a[tag].stats[name], b[tag].stats[name], err_msg=name)
        assert a[tag].initial_generated == b[tag].initial_generated


def no_eos_problem(length=3):
    """Every completion `length` tokens (EOS at logit -30), log p distinct for each (random logits
    per prefix): best-of-N's candidates all finish and its selection has no ties."""
    return toy.make_problem(lambda prefix: np.append(np.random.default_rng(list(prefix)).normal(size=3) * 2, -30.0),
                            4, 3, (0,), length)


def best_of_n_law(problem, budget: int) -> dict:
    """The exact law of the completion compute-matched best-of-N keeps: candidates drawn from p one
    after another, each capped at what is left of `budget`; the first is kept, then any with a
    higher mean log p, and a candidate cut short by the cap (no EOS, under max_new_tokens) ranks
    after every finished one. Enumerated over (tokens spent, completion kept), float64."""
    eos = problem.lm.eos_token_ids

    @functools.cache
    def candidates(cap: int) -> list[tuple[tuple[int, ...], float, float]]:
        """(completion, log p, score) of every candidate of at most `cap` tokens."""
        out = []
        for x, log_p in dataclasses.replace(problem, max_new_tokens=cap).completions():
            finished = x[-1] in eos or len(x) >= problem.max_new_tokens
            out.append((x, log_p, log_p / len(x) + (0.0 if finished else -1e6)))
        return out

    @functools.cache
    def kept(spent: int, best, best_score: float) -> dict:
        if spent >= budget:
            return {best: 1.0}
        law = collections.defaultdict(float)
        for x, log_p, score in candidates(min(problem.max_new_tokens, budget - spent)):
            better = best is None or score > best_score
            for y, q in kept(spent + len(x), *((x, score) if better else (best, best_score))).items():
                law[y] += np.exp(log_p) * q
        return dict(law)

    return kept(0, None, -np.inf)


@pytest.mark.slow
@pytest.mark.parametrize("problem, budget", [(no_eos_problem(), 9), (no_eos_problem(), 8),
                                             (toy.markov_problem(4, 4, seed=0), 9)],
                         ids=["3 candidates", "2 and one cut short", "with EOS"])
def test_best_of_n_on_the_engine_keeps_the_likeliest_of_its_candidates(problem, budget):
    """Candidates of 3 tokens: a budget of 9 buys 3 of them, and 8 buys 2 and one cut short, which
    is never kept while a finished one exists; with EOS, candidates of every length and as many as
    the budget buys. The draws follow the exact best-of-N law at every seed, and are told apart
    from plain draws of p."""
    schedule = Schedule.best_of_n(problem.max_new_tokens, budget, alpha=1.0, tau=1.0)

    def best(seed):
        items = [WorkItem(problem.prompt, chain_key(seed, "best-of-n", 0, chain), chain) for chain in range(2000)]
        results = list(Engine(problem.lm, schedule, width=len(items), prompt_block=1, narrow=False).run(items))
        assert all(int(r.steps["new_suffix_length"].sum()) == budget for r in results)
        return [completion(r.tokens[0], r.length[0]) for r in results]

    draws = {seed: best(seed) for seed in SEEDS}
    assert_exact_at_every_seed(lambda seed: Comparison(draws[seed], best_of_n_law(problem, budget)))
    assert_rejected_at_every_seed(lambda seed: Comparison(draws[seed], problem.power_distribution(1.0)), "plain p")


@pytest.mark.parametrize("schedule", [
    Schedule.suffix_mh(4, 6, cut=CUTS["mixture"], alpha=4.0, tau=0.25),
    Schedule.blockwise(4, 2, 3, cut=CUTS["entropy_jump"], alpha=4.0, tau=0.25),
    Schedule.best_of_n(4, 10, alpha=4.0, tau=1.0),
], ids=["suffix", "blockwise", "best-of-n"])
def test_records_do_not_depend_on_slot_count_queue_order_or_interruption(schedule, monkeypatch):
    prompts = [(0,), (0, 1), (0, 2, 1), (0, 1, 1)]
    reference = chains(schedule, prompts, width=2)
    assert_same_records(reference, chains(schedule, prompts, width=5))
    with monkeypatch.context() as patch:  # the five free slots filled two prompts at a time
        patch.setattr(scheduler, "ADMISSION_ROWS", 2)
        assert_same_records(reference, chains(schedule, prompts, width=5))
    order = list(np.random.default_rng(0).permutation(len(reference)))
    assert_same_records(reference, chains(schedule, prompts, width=5, order=order))
    # interrupted after half the work, then resumed with the rest in other slots: the same records
    # (two widths in all: each compiles the loop anew)
    first, rest = order[: len(order) // 2], order[len(order) // 2 :]
    resumed = chains(schedule, prompts, width=5, order=first) | chains(schedule, prompts, width=2, order=rest)
    assert_same_records(reference, resumed)
    # and they do depend on the seed
    other = chains(schedule, prompts, width=2, seed=1)
    assert any(not np.array_equal(other[t].tokens, reference[t].tokens) for t in reference)


def test_the_drain_narrows_the_batch_and_counts_only_the_slots_it_had():
    """Once the queue is empty, the busy chains move into narrower batches: the records are those
    of a run that never narrows, and occupancy counts the slots each iteration had."""
    schedule = Schedule.suffix_mh(4, 5, cut=CUTS["mixture"], alpha=4.0, tau=0.25)
    items = [WorkItem(PROBLEM.prompt, chain_key(0, "drain", chain, 0), chain) for chain in range(12)]
    engines = {narrow: Engine(PROBLEM.lm, schedule, width=8, prompt_block=1, narrow=narrow, min_width=1)
               for narrow in (True, False)}
    runs = {narrow: {r.item.tag: r for r in engine.run(items)} for narrow, engine in engines.items()}
    assert_same_records(runs[False], runs[True])
    narrowed, wide = engines[True].stats, engines[False].stats
    assert wide.slot_iterations == 8 * wide.iterations
    assert narrowed.slot_iterations < 8 * narrowed.iterations and narrowed.decoded == wide.decoded
    assert narrowed.occupancy > wide.occupancy
    # the account by width adds up to the totals, and shows the widths the drain narrowed to
    assert list(wide.by_width) == [8] and list(narrowed.by_width)[0] == 8 and min(narrowed.by_width) < 8
    for stats in (narrowed, wide):
        shares = stats.by_width.values()
        assert sum(s.iterations for s in shares) == stats.iterations and sum(s.decoded for s in shares) == stats.decoded
        assert sum(s.seconds for s in shares) == pytest.approx(stats.seconds)
    assert narrowed.slot_iterations == sum(width * s.iterations for width, s in narrowed.by_width.items())
    floored = Engine(PROBLEM.lm, schedule, width=8, prompt_block=1, min_width=8)  # the default floor: no narrowing
    list(floored.run(items))
    assert floored.stats.slot_iterations == 8 * floored.stats.iterations


@pytest.mark.parametrize("starting", [False, True], ids=["proposed", "from a completion"])
def test_static_attention_leaves_every_record_as_it_was(starting, monkeypatch):
    """A transformer's engine with attention over spans (loops of known trip count, what an
    accelerator runs) against its dynamic loop: the same records, bit for bit, while the host
    widens the span as the chains reach further. Chains started from 56-token completions reach
    past the first span within the first trip: the device loop stops before feeding a position
    beyond it."""
    monkeypatch.setattr(transformer, "ATTENTION_CHUNK", 16)  # spans 32 and 64 (the cache)
    lm = tiny_model()
    schedule = Schedule.suffix_mh(60, 3, cut=CUTS["uniform"], alpha=4.0, tau=0.25)
    rng = np.random.default_rng(0)
    items = [WorkItem([5, 6, 7, 10 + i], chain_key(0, "spans", i, 0), i,
                      [int(t) for t in rng.integers(1, lm.vocab_size, 56)] if starting else None) for i in range(6)]
    spans = []

    def recording(slots, lm, iterations, min_busy, schedule, span):
        spans.append(span)
        return advance(slots, lm, iterations, min_busy, schedule, span)

    advance = scheduler._advance
    monkeypatch.setattr(scheduler, "_advance", recording)
    runs = {static: {r.item.tag: r for r in Engine(lm, schedule, width=4, prompt_block=4, iterations_per_trip=8,
                                                    narrow=False, static_attention=static).run(items)}
            for static in (True, False)}
    assert_same_records(runs[False], runs[True])
    static, dynamic = spans[: spans.index(None)], spans[spans.index(None):]
    assert set(dynamic) == {None} and static[0] == 32 and 64 in static
    assert max(int(r.length.max()) for r in runs[True].values()) > 32  # the chains did reach the second span


def test_a_chain_records_every_step_and_draw_of_its_schedule():
    schedule = Schedule.blockwise(4, 2, 3, cut=CUTS["uniform"], alpha=2.0, tau=0.5)
    assert (schedule.num_steps, schedule.num_draws) == (8, 2)
    result = next(iter(chains(schedule, [(0,)], width=1).values()))
    assert result.tokens.shape == (2, 4) and result.steps["cut"].shape == (8,)
    # extensions (steps 0 and 4) are kept; the cut of an MH step lies inside the completion
    assert result.steps["accepted"][[0, 4]].all()
    assert result.length[0] <= 2 and result.length[1] <= 4
    assert (result.steps["cut"][1:4] < result.length[0]).all()
    assert result.seconds > 0


@pytest.mark.parametrize("cut_name", ["uniform", "entropy_jump"])
def test_each_draw_records_both_sides_of_its_step(cut_name):
    """The draw and what its step did not keep are the step's two sequences: the same up to the
    cut; when the step was accepted the unkept one is the previous draw, when rejected the draw is.
    With one MH step a draw, the last step's decision is the draw's."""
    schedule = suffix_schedule(cut_name, 2.0, steps=24)
    results = chains(schedule, [PROBLEM.prompt], width=3).values()
    seen = collections.Counter()
    for result in results:
        last = result.last_step
        np.testing.assert_array_equal(last["last_accepted"][1:], result.stats["accepted"][1:] == 1)
        np.testing.assert_allclose(last["last_accept_prob"][1:], result.stats["accept_prob"][1:])
        for draw in range(1, schedule.num_draws):
            cut, accepted = int(result.stats["cut"][draw]), bool(result.stats["accepted"][draw])
            kept_now = completion(result.tokens[draw], result.length[draw])
            other = completion(last["unkept_tokens"][draw], last["unkept_length"][draw])
            before = completion(result.tokens[draw - 1], result.length[draw - 1])
            assert kept_now[:cut] == other[:cut]
            assert (other if accepted else kept_now) == before
            np.testing.assert_array_equal(last["unkept_entropy"][draw, :cut], result.entropy[draw, :cut])
            seen[accepted] += 1
    assert seen[True] and seen[False]  # both cases occurred


def test_a_draw_of_several_steps_records_the_decision_of_its_last():
    schedule = Schedule.blockwise(4, 2, 3, cut=CUTS["uniform"], alpha=2.0, tau=0.5)
    for result in chains(schedule, [PROBLEM.prompt], width=3).values():
        accepted, last = result.stats["accepted"], result.last_step["last_accepted"]
        assert not last[accepted == 0].any() and last[accepted == 1].all()  # the fraction of 3 MH steps
        assert ((last_prob := result.last_step["last_accept_prob"]) >= 0).all() and (last_prob <= 1).all()


def test_wall_time_shares_add_up_and_do_not_carry_over_between_chains_of_a_slot():
    schedule = Schedule.suffix_mh(4, 3, cut=CUTS["uniform"], alpha=2.0, tau=0.5)
    items = [WorkItem(PROBLEM.prompt, chain_key(0, "time", chain, 0), chain) for chain in range(12)]
    engine = Engine(PROBLEM.lm, schedule, width=2, prompt_block=1, iterations_per_trip=4)
    seconds = [result.seconds for result in engine.run(items)]
    assert sum(seconds) <= engine.stats.seconds * 1.001
    assert max(seconds) < 0.5 * sum(seconds)  # twelve chains in two slots: none holds half the time


def test_bad_work_is_refused():
    schedule = Schedule.independent(4, alpha=1.0, tau=1.0)
    engine = Engine(PROBLEM.lm, schedule, width=2, prompt_block=2)
    with pytest.raises(ValueError, match="prompt"):
        list(engine.run([WorkItem((0, 1, 2), chain_key(0, "x", 0, 0))]))
    with pytest.raises(ValueError, match="start"):
        list(engine.run([WorkItem((0,), chain_key(0, "x", 0, 0), start=(1,)), WorkItem((0,), chain_key(0, "x", 1, 0))]))
    with pytest.raises(ValueError, match="width"):
        Engine(PROBLEM.lm, schedule, width=0, prompt_block=2)


def prefix_ids(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The toy model's cache for token rows [W, S]: the id of the string ending at each position."""
    ids = np.zeros(tokens.shape, np.int64)
    for position in range(tokens.shape[1]):
        before = ids[:, position - 1] if position else 0
        ids[:, position] = before * vocab_size + tokens[:, position] + 1
    return ids


@pytest.mark.parametrize("paused", [False, True], ids=["running through", "paused after every draw"])
def test_the_cache_always_holds_the_tokens_it_is_read_for(paused):
    """After every iteration, for every busy slot: the working cache agrees with the current state
    below `valid` and with the proposal up to its last fed token, and the backup agrees with the
    current state below `backed`. The toy model's cache is the id of the prefix at each position,
    so a stale entry (a rejected proposal's, never restored) shows. Paused after every draw and
    resumed (as a NumPyro kernel drives the slots), the caches must hold the same."""
    logits = np.random.default_rng(0).normal(size=(3, 3)) + [0.0, 0.0, -4.0]  # EOS (2) is rare: long completions
    problem = toy.make_problem(lambda prefix: logits[prefix[-1]], 3, 2, (0,), 9)
    schedule = Schedule.suffix_mh(9, 40, cut=CUTS["uniform"], alpha=4.0, tau=1.0)  # many rejections
    lm, chains = problem.lm, 6
    slots = slot_ops.empty_slots(lm, chains, 1, schedule)
    keys = np.stack([chain_key(0, "cache", chain, 0) for chain in range(chains)])
    stop = np.full(chains, 1 if paused else schedule.num_draws, np.int32)
    slots = slot_ops.admit(slots, lm, np.arange(chains), np.zeros((chains, 1), np.int32), np.ones(chains, np.int32),
                           keys, np.arange(chains), None, stop, schedule)
    iterate = jax.jit(slot_ops.iterate, static_argnums=2)
    resume = jax.jit(slot_ops.resume, static_argnums=3)
    while np.asarray(slots.busy).any():
        slots = iterate(slots, lm, schedule)
        if paused and not np.asarray(slots.busy).any():
            stop = np.minimum(stop + 1, schedule.num_draws)
            slots = resume(slots, lm, stop, schedule)
        cache, valid, busy = np.asarray(slots.cache), np.asarray(slots.valid), np.asarray(slots.busy)
        backup, backed = np.asarray(slots.backup), np.asarray(slots.backed)
        current = prefix_ids(np.asarray(slots.current.tokens), 3)
        proposal = prefix_ids(np.asarray(slots.proposal.tokens), 3)
        fed = np.asarray(slots.proposal.length)  # fed positions: up to P + length - 2, P = 1
        for row in np.flatnonzero(busy):
            np.testing.assert_array_equal(cache[row, : valid[row]], current[row, : valid[row]])
            np.testing.assert_array_equal(backup[row, : backed[row]], current[row, : backed[row]])
            np.testing.assert_array_equal(cache[row, : fed[row]], proposal[row, : fed[row]])
            # what a later step may keep of the current state is in one cache or the other
            assert max(valid[row], backed[row]) >= np.asarray(slots.current.length)[row], row
    assert (np.asarray(slots.drawn) == schedule.num_draws).all()
    counters = slots.counters
    assert int(counters.restored) > 20 and int(counters.decoded) > 500  # restores were exercised
    assert not np.asarray(slots.steps.accepted)[:, 1:].all()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [Schedule.suffix_mh(24, 6, cut=CUTS["mixture"], alpha=4.0, tau=0.25),
                                      Schedule.best_of_n(24, 60, alpha=4.0, tau=1.0)], ids=["suffix-mh", "best-of-n"])
def test_engine_draws_on_a_transformer_match_their_teacher_forced_scores(smollm, schedule):
    """After many rejections and refills (suffix MH), or many candidates decoded over each other
    from the prompt on (best-of-N, which never backs its cache up), every draw's log p (kept token
    by token as it was decoded) equals a fresh scoring of its tokens: no stale cache."""
    prompts = [smollm.encode(text, chat=False) for text in ("The capital of France is", "1, 2, 3,", "def f(x):")]
    results = chains(schedule, prompts, width=4, lm=smollm.lm)
    if schedule.token_budget:  # several candidates, the budget spent exactly
        assert all((r.steps["new_suffix_length"] > 0).sum() >= 3 for r in results.values())
        assert all(r.steps["new_suffix_length"].sum() == schedule.token_budget for r in results.values())
    else:
        assert any(not r.steps["accepted"][1:].all() for r in results.values())  # rejections happened
    block = max(len(p) for p in prompts)
    for (problem, _), result in results.items():
        seqs = generation.new_sequences([prompts[problem]] * result.tokens.shape[0], 24, prompt_block=block)
        scored, _ = generation.teacher_force(smollm.lm, seqs, jax.numpy.asarray(
            np.where(np.arange(24) < result.length[:, None], result.tokens, smollm.lm.eos_token_ids[0])), schedule.tau)
        np.testing.assert_array_equal(np.asarray(scored.length), result.length)
        np.testing.assert_allclose(schedule.alpha * np.asarray(generation.sequence_log_prob(scored)), result.log_target,
                                   rtol=1e-4, atol=1e-3)
