"""The engine's device side: W slots, each running its own chain, advanced one token per slot per
iteration inside one compiled loop (DESIGN section 7).

Every iteration feeds each busy slot's proposal its last token and draws the next from
softmax(logits / tau).

Each slot has two caches: the working cache the model reads and writes, and a backup of the
current state's keys and values. A proposal writes its keys and values past its cut into the
working cache, so before it starts, a slot whose working cache holds current-state entries past
the cut that the backup lacks copies its working cache into the backup; after a rejection, a later
step whose cut lies beyond what the working cache still holds of the current state first copies
the backup back. Both are whole-slot copies, at most one each per step, instead of re-encoding the
current tokens one decode iteration at a time (`valid` and `backed` count the leading positions of
each cache that hold the current state).

A slot whose proposal ends (EOS or the step's length cap) accepts or rejects it with the ratio of
`ppl_ecmh.mh.log_acceptance`, records the step, and starts its next step in the same iteration,
while the other slots go on decoding. A chain that has done all its steps leaves its slot idle
until the host admits the next (problem, chain) into it (`admit`, a batched prefill).

Randomness is keyed by work: the cut, the acceptance and every proposal token of step s of a chain
come from fold_in(chain_key, s) and the token's completion index, so a chain's draws do not depend
on the slot count, on its neighbours or on when it was admitted.

Running ahead (the drain's idle slots): a free slot may take a copy of a chain whose step s in
flight is an MH step and run the chain on from step s + 1 as if s were rejected, since a rejection
leaves the state, and so everything step s + 1 draws from its own keys, as it was. When step s
ends, a rejection hands the chain to the slot ahead (with the record of step s) and frees the
first; an acceptance discards the slot ahead. A chain's records are those it has without running
ahead, token for token; a rejected MH step no longer holds up the step after it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.engine.schedule import Schedule, best_of_n_score
from ppl_ecmh.lm import spans
from ppl_ecmh.lm.generation import (Sequences, ends_with_eos, is_eos, prefill, sample_tokens, sequence_log_prob,
                                    teacher_force, token_statistics)
from ppl_ecmh.mh import SuffixMHState, cut_log_probs, log_acceptance, select_rows

CUT, ACCEPT, TOKEN = 0, 1, 2  # the uses of a step's key


class StepRecord(NamedTuple):
    """Per slot and step [W, num_steps]: what each step did."""

    accepted: jax.Array
    accept_prob: jax.Array
    cut: jax.Array
    old_suffix_length: jax.Array
    new_suffix_length: jax.Array  # = tokens decoded by the step


class DrawRecord(NamedTuple):
    """Per slot and draw [W, num_draws, ...]: the state a draw keeps."""

    tokens: jax.Array  # [W, D, T] completion tokens (0 past the length)
    entropy: jax.Array  # [W, D, T]
    length: jax.Array
    log_target: jax.Array


class Counters(NamedTuple):
    iterations: jax.Array  # [] decode iterations
    slot_iterations: jax.Array  # [] slots x iterations, summed over the widths the batch had
    decoded: jax.Array  # [] proposal tokens decoded, over all slots
    saved: jax.Array  # [] slot caches copied into their backup before a proposal overwrote them
    restored: jax.Array  # [] slot caches copied back from their backup after a rejection
    ran_ahead: jax.Array  # [] steps begun ahead of their chain's step in flight
    discarded: jax.Array  # [] tokens decoded ahead of a step that was then accepted: wasted
    busy_iterations: jax.Array  # [W] iterations each slot has been busy (the host reads differences)


class Slots(NamedTuple):
    current: Sequences  # [W] each chain's state
    proposal: Sequences  # [W] the step in flight: current's first `cut` tokens, then new ones
    cache: Any  # the model's cache, one row per slot: the working cache
    backup: Any  # the same shape: the current state's keys and values, while a proposal overwrites them
    valid: jax.Array  # [W] leading positions of `cache` that hold the current state's keys and values
    backed: jax.Array  # [W] leading positions of `backup` that hold them
    cut: jax.Array  # [W] kept completion tokens of the step in flight
    limit: jax.Array  # [W] completion length cap of the step in flight
    step: jax.Array  # [W] the step in flight
    busy: jax.Array  # [W] the slot holds a chain with steps left
    owner: jax.Array  # [W] the host's number for the chain the slot holds; -1: the slot is free
    ahead: jax.Array  # [W] the slot runs its chain ahead, as if the step in flight in the other were rejected
    ahead_decoded: jax.Array  # [W] tokens the slot has decoded ahead (wasted if that step is accepted)
    chain_key: jax.Array  # [W, 2] raw PRNG keys, one per chain
    steps: StepRecord
    draws: DrawRecord
    counters: Counters


def _step_key(chain_key, step, use):
    return jax.vmap(lambda k, s: jax.random.fold_in(jax.random.fold_in(k, s), use))(chain_key, step)


def empty_slots(lm, width: int, prompt_block: int, schedule: Schedule) -> Slots:
    """W idle slots for prompts of at most `prompt_block` tokens."""
    total = schedule.max_new_tokens
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)
    # every field its own array, so the slots can be donated to a compiled step whole
    seqs = lambda: Sequences(ints(width, prompt_block + total), jnp.ones(width, jnp.int32), ints(width),
                             *(jnp.zeros((width, total), jnp.float32) for _ in range(3)))
    cache = lambda: lm.init_cache(width, prompt_block + total)
    return _slots(seqs(), seqs(), cache(), cache(), ints(width), ints(width), jnp.zeros(width, bool),
                  jnp.full(width, -1, jnp.int32), jnp.zeros((width, 2), jnp.uint32), schedule)


def _slots(current, proposal, cache, backup, valid, backed, busy, owner, chain_key, schedule: Schedule) -> Slots:
    """Slots holding these chains at step 0, with empty records."""
    width, total, steps, draws = busy.shape[0], schedule.max_new_tokens, schedule.num_steps, schedule.num_draws
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)
    return Slots(
        current=current, proposal=proposal, cache=cache, backup=backup, valid=valid, backed=backed,
        cut=ints(width), limit=ints(width),
        step=ints(width), busy=busy, owner=owner, ahead=jnp.zeros(width, bool), ahead_decoded=ints(width),
        chain_key=chain_key,
        steps=StepRecord(jnp.zeros((width, steps), bool), jnp.zeros((width, steps)), ints(width, steps),
                         ints(width, steps), ints(width, steps)),
        draws=DrawRecord(ints(width, draws, total), jnp.zeros((width, draws, total)), ints(width, draws),
                         jnp.zeros((width, draws))),
        counters=Counters(ints(), ints(), ints(), ints(), ints(), ints(), ints(), ints(width)),
    )


def admit(slots: Slots, lm, slot_index, prompts, prompt_length, chain_key, owner, completions,
          schedule: Schedule) -> Slots:
    """Start chains numbered `owner` [R] in the slots `slot_index` [R] (out of range: ignored) from
    prompts [R, prompt_block], prefilled in one forward pass. With `completions` [R, T] (each ending at its
    first EOS, or T long), the chains start from those, scored in the same pass: step 0 then has
    nothing to extend, and the chain's first move is its first MH step."""
    rows, block = prompts.shape
    total = slots.current.tokens.shape[1]
    zeros = jnp.zeros((rows, schedule.max_new_tokens), jnp.float32)
    tokens = jnp.zeros((rows, total), jnp.int32).at[:, :block].set(prompts)
    fresh = Sequences(tokens, prompt_length, jnp.zeros(rows, jnp.int32), zeros, zeros, zeros)
    if completions is None:
        cache = prefill(lm, fresh)
    else:
        fresh, cache = teacher_force(lm, fresh, completions, schedule.tau)
    put = lambda big, new: big.at[slot_index].set(new, mode="drop")
    first = jnp.zeros(rows, jnp.int32)
    slots = slots._replace(
        current=jax.tree.map(put, slots.current, fresh), cache=jax.tree.map(put, slots.cache, cache),
        valid=put(slots.valid, prompt_length + fresh.length), backed=put(slots.backed, first),
        step=put(slots.step, first),
        busy=put(slots.busy, jnp.ones(rows, bool)), owner=put(slots.owner, owner),
        ahead=put(slots.ahead, jnp.zeros(rows, bool)), chain_key=put(slots.chain_key, chain_key),
        steps=jax.tree.map(lambda record: record.at[slot_index].set(jnp.zeros((), record.dtype), mode="drop"),
                           slots.steps),
    )
    return _start_steps(slots, lm, put(jnp.zeros_like(slots.busy), jnp.ones(rows, bool)), schedule)


def _start_steps(slots: Slots, lm, starting, schedule: Schedule) -> Slots:
    """For the slots `starting`, begin their step `slots.step`: choose the cut, make the working
    cache hold the current state up to it and the backup hold what the proposal will overwrite,
    and reset the proposal."""
    current, step = slots.current, slots.step
    if schedule.token_budget:  # best-of-N: a candidate from scratch, within what is left of the budget
        cut = jnp.zeros_like(step)
        limit = jnp.minimum(schedule.max_new_tokens, schedule.token_budget - _spent(slots))
    else:
        extension = schedule.is_extension(step)
        mh_cut = jax.vmap(jax.random.categorical)(_step_key(slots.chain_key, step, CUT),
                                                  cut_log_probs(schedule.cut, current))
        cut = jnp.where(extension, current.length, mh_cut.astype(jnp.int32))
        limit = schedule.limit(step).astype(jnp.int32)
        # an extension of a sample that ended, or is already as long as its stage allows, decodes nothing
        limit = jnp.where(extension & (ends_with_eos(lm, current) | (current.length >= limit)), cut, limit)
        slots = _backed_up(slots, starting, current.prompt_length + cut)
    proposal = select_rows(starting, current._replace(length=cut), slots.proposal)
    return slots._replace(proposal=proposal, cut=jnp.where(starting, cut, slots.cut),
                          limit=jnp.where(starting, limit, slots.limit))


def _backed_up(slots: Slots, starting, kept) -> Slots:
    """For the slots `starting` of a step that keeps the first `kept` [W] positions (prompt and
    kept tokens) and feeds position kept - 1 first: restore the working cache from the backup if
    it no longer holds the current state up to there (a rejection overwrote it), then save it to
    the backup if the proposal would overwrite current-state entries the backup lacks. The backup
    always holds the current state where the working cache does not, so after the restore the
    working cache holds it up to kept - 1, and no token is ever re-encoded."""
    restore = starting & (slots.valid < kept - 1)
    cache = _copy_slots(slots.cache, slots.backup, restore)
    valid = jnp.where(restore, slots.backed, slots.valid)
    save = starting & (valid > kept) & (slots.backed < valid)
    backup = _copy_slots(slots.backup, cache, save)
    counters = slots.counters._replace(saved=slots.counters.saved + jnp.sum(save),
                                       restored=slots.counters.restored + jnp.sum(restore))
    return slots._replace(cache=cache, valid=valid, backup=backup, backed=jnp.where(save, valid, slots.backed),
                          counters=counters)


def _copy_slots(destination, source, slots, origin=None):
    """`destination` (a cache pytree, slot axis first) with the slots `slots` [W] (bool) copied
    from `source` (slot j from slot `origin[j]`, by default j; `source=None`: from `destination`
    itself, whose copied slots must then not be the origin of any): a loop over those slots alone,
    each copy in place, so a step that copies no slot (most) costs nothing and one that copies k
    costs k slot caches, not W. Reading `destination` through the loop's carry rather than as a
    second operand is what lets XLA copy within one cache without first copying all of it."""
    index = jnp.nonzero(slots, size=slots.shape[0], fill_value=0)[0]
    origin = index if origin is None else origin[index]

    def copy(i, destination):
        take = lambda source: jax.lax.dynamic_index_in_dim(source, origin[i], 0, keepdims=True)
        return jax.tree.map(lambda d, s: jax.lax.dynamic_update_index_in_dim(d, take(s), index[i], 0),
                            destination, destination if source is None else source)

    return jax.lax.fori_loop(0, jnp.sum(slots), copy, destination)


def _finish_steps(slots: Slots, lm, finishing, run_ahead: bool, schedule: Schedule) -> Slots:
    """For the slots `finishing`, accept or reject their proposal, record the step, move on; with
    `run_ahead`, settle the bets of the slots ahead of them."""
    current, proposal, cut, step = slots.current, slots.proposal, slots.cut, slots.step
    rows = jnp.arange(step.shape[0])
    if schedule.token_budget:  # best-of-N: the first candidate, then any that scores higher
        mh_step = jnp.zeros_like(finishing)
        limit = schedule.max_new_tokens
        better = best_of_n_score(lm, proposal, limit) > best_of_n_score(lm, current, limit)
        accepted = finishing & ((step == 0) | better)
        accept_prob = accepted.astype(jnp.float32)
    else:
        mh_step = ~schedule.is_extension(step)
        log_a = log_acceptance(current, proposal, cut, schedule.cut, schedule.alpha, schedule.drop_cut_ratio)
        uniform = jax.vmap(jax.random.uniform)(_step_key(slots.chain_key, step, ACCEPT))
        accepted = finishing & (~mh_step | (jnp.log(uniform) < log_a))
        accept_prob = jnp.where(mh_step, jnp.exp(jnp.minimum(log_a, 0.0)), 1.0)
    new = select_rows(accepted, proposal, current)
    # an accepted proposal fed every position before its last token; a rejected one leaves `valid`
    # where feeding it put it (at most its cut). The backup then holds the new state up to the cut.
    valid = jnp.where(accepted & (proposal.length > cut), current.prompt_length + proposal.length - 1, slots.valid)
    backed = jnp.where(accepted, jnp.minimum(slots.backed, current.prompt_length + cut), slots.backed)

    at = jnp.where(finishing, step, schedule.num_steps)  # out of range: not recorded
    record = lambda buffer, value: buffer.at[rows, at].set(value, mode="drop")
    steps = StepRecord(
        record(slots.steps.accepted, accepted), record(slots.steps.accept_prob, accept_prob),
        record(slots.steps.cut, cut), record(slots.steps.old_suffix_length, jnp.where(mh_step, current.length - cut, 0)),
        record(slots.steps.new_suffix_length, proposal.length - cut),
    )
    next_step = step + finishing
    busy = slots.busy & (next_step < schedule.num_steps)
    if schedule.token_budget:  # the chain ends with its budget, and draws the best candidate then
        busy = busy & (_spent(slots._replace(steps=steps)) < schedule.token_budget)
        draw = jnp.where(finishing & ~busy, 0, -1)
    else:
        draw = jnp.where(finishing, schedule.draw_index(step), -1)
    draw = jnp.where(draw >= 0, draw, schedule.num_draws)
    completion_index = jnp.arange(schedule.max_new_tokens)[None, :]
    inside = completion_index < new.length[:, None]
    positions = new.prompt_length[:, None] + completion_index
    completion = jnp.where(inside, jnp.take_along_axis(new.tokens, positions, axis=1), 0)
    put = lambda buffer, value: buffer.at[rows, draw].set(value, mode="drop")
    draws = DrawRecord(put(slots.draws.tokens, completion), put(slots.draws.entropy, jnp.where(inside, new.entropy, 0.0)),
                       put(slots.draws.length, new.length),
                       put(slots.draws.log_target, schedule.alpha * sequence_log_prob(new)))
    slots = slots._replace(current=new, valid=valid, backed=backed, step=next_step, busy=busy, steps=steps,
                           draws=draws)
    if run_ahead and not schedule.token_budget:
        slots = _settle_runs_ahead(slots, finishing & mh_step, accepted, at, draw, schedule)
    return _start_steps(slots, lm, finishing & slots.busy, schedule)


def _partners(owner):
    """For each slot, the other slot holding its chain, or W where there is none (a chain holds
    at most two: its own and one running ahead)."""
    width = owner.shape[0]
    same = (owner[:, None] == owner[None, :]) & (owner[:, None] >= 0) & ~jnp.eye(width, dtype=bool)
    return jnp.where(jnp.any(same, axis=1), jnp.argmax(same, axis=1), width)


def _settle_runs_ahead(slots: Slots, settled, accepted, at, draw, schedule: Schedule) -> Slots:
    """The slots ahead of the MH steps that ended now (`settled`, with their record's step `at`
    and draw `draw`): a rejection hands the chain to the slot ahead, which takes the record of
    that step and draw, and frees the slot behind; an acceptance discards the slot ahead."""
    width = slots.owner.shape[0]
    partner = _partners(slots.owner)
    behind = jnp.minimum(partner, width - 1)
    settling = slots.ahead & (partner < width) & settled[behind]  # slots ahead whose bet is settled now
    promoted, discarded = settling & ~accepted[behind], settling & accepted[behind]
    retired = settled & ~slots.ahead & (partner < width) & ~accepted  # the slot ahead goes on with the chain
    rows = jnp.arange(width)

    def take(record, index, size):
        """Slot `behind`'s entry `index` of `record`, written into each promoted slot."""
        source = record[behind, jnp.minimum(index[behind], size - 1)]
        return record.at[rows, jnp.where(promoted, index[behind], size)].set(source, mode="drop")

    steps = jax.tree.map(lambda record: take(record, at, schedule.num_steps), slots.steps)
    draws = jax.tree.map(lambda record: take(record, draw, schedule.num_draws), slots.draws)
    freed = discarded | retired
    counters = slots.counters._replace(discarded=slots.counters.discarded + jnp.sum(jnp.where(discarded,
                                                                                              slots.ahead_decoded, 0)))
    return slots._replace(steps=steps, draws=draws, busy=slots.busy & ~freed, owner=jnp.where(freed, -1, slots.owner),
                          ahead=slots.ahead & ~settling, ahead_decoded=jnp.where(settling, 0, slots.ahead_decoded),
                          counters=counters)


def _run_ahead(slots: Slots, lm, schedule: Schedule) -> Slots:
    """Each free slot takes a chain whose step in flight is an MH step with a step after it and no
    slot ahead yet (the k-th such chain into the k-th free slot): a copy of its slot, both caches
    included, that begins the next step as if the one in flight were rejected."""
    width = slots.owner.shape[0]
    free = slots.owner < 0
    can = (slots.busy & ~slots.ahead & (_partners(slots.owner) == width) & ~schedule.is_extension(slots.step)
           & (slots.step + 1 < schedule.num_steps))
    chains = jnp.nonzero(can, size=width, fill_value=width)[0]
    origin = jnp.where(free, chains[jnp.clip(jnp.cumsum(free) - 1, 0, width - 1)], width)
    forking = origin < width

    # No conditional around this, although most iterations fork nothing: for a conditional that
    # carries the caches, XLA:GPU copies both whole caches at every iteration (docs/gpu-recipe.md).
    # One loop copies both: it takes the backup that the finishing slots' saves wrote, so it runs
    # after those saves read the working cache. A loop of its own for the working cache could run
    # before them, and XLA would then copy the whole cache to keep what they read.
    source = jnp.minimum(origin, width - 1)
    copy = lambda leaf: jnp.where(forking.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf[source], leaf)
    slots = slots._replace(**{name: jax.tree.map(copy, getattr(slots, name)) for name in (
        "current", "valid", "backed", "step", "owner", "chain_key", "steps", "draws")})
    cache, backup = _copy_slots((slots.cache, slots.backup), None, forking, source)
    slots = slots._replace(
        cache=cache, backup=backup, step=slots.step + forking, busy=slots.busy | forking, ahead=slots.ahead | forking,
        ahead_decoded=jnp.where(forking, 0, slots.ahead_decoded),
        counters=slots.counters._replace(ran_ahead=slots.counters.ran_ahead + jnp.sum(forking)))
    return _start_steps(slots, lm, forking, schedule)


def release(slots: Slots, free) -> Slots:
    """The slots `free` [W] (bool) handed back: the host has collected their chains' records."""
    return slots._replace(owner=jnp.where(free, -1, slots.owner))


def narrowed(slots: Slots, keep) -> Slots:
    """The slots `keep` [W'] alone, in that order: a narrower batch for a run's drain."""
    return jax.tree.map(lambda leaf: leaf if jnp.ndim(leaf) == 0 else leaf[keep], slots)


def _spent(slots: Slots):
    """Tokens each slot's chain has decoded so far (the records are reset when a chain is admitted)."""
    return jnp.sum(slots.steps.new_suffix_length, axis=1)


def iterate(slots: Slots, lm, run_ahead, schedule: Schedule) -> Slots:
    """One decode iteration of every slot (see the module docstring); with `run_ahead` (a Python
    bool: the default loop compiles without any of it), free slots then run chains ahead (only
    suffix-MH and block-wise steps can be rejected)."""
    current, proposal = slots.current, slots.proposal
    rows = jnp.arange(slots.step.shape[0])
    total = current.tokens.shape[1]
    prompt_length = current.prompt_length
    proposing = _proposing(slots)
    empty = slots.busy & ~proposing  # a step with nothing to decode

    last = feeding_position(slots)
    position = jnp.where(proposing, last, total)  # idle: out of range
    token = proposal.tokens[rows, jnp.clip(last, 0, total - 1)]
    logits, cache = lm.forward(slots.cache, token[:, None], position[:, None])
    logits = logits[:, 0]

    index = proposal.length  # completion index of the token drawn now
    keys = jax.vmap(jax.random.fold_in)(_step_key(slots.chain_key, slots.step, TOKEN), index)
    drawn = jax.vmap(sample_tokens)(keys, logits / schedule.tau)
    stats = token_statistics(logits, drawn, schedule.tau)
    at = jnp.where(proposing, index, schedule.max_new_tokens)
    proposal = proposal._replace(
        tokens=proposal.tokens.at[rows, jnp.where(proposing, last + 1, total)].set(drawn, mode="drop"),
        length=proposal.length + proposing,
        logp=proposal.logp.at[rows, at].set(stats.logp, mode="drop"),
        logq=proposal.logq.at[rows, at].set(stats.logq, mode="drop"),
        entropy=proposal.entropy.at[rows, at].set(stats.entropy, mode="drop"),
    )
    finishing = empty | (proposing & (is_eos(lm, drawn) | (proposal.length >= slots.limit)))
    # `valid` follows what was fed: the kept token before the cut at `valid` extends it, a proposal
    # token past the cut overwrites the current state there
    past_cut = proposing & (last >= prompt_length + slots.cut)
    valid = jnp.where(proposing & ~past_cut & (position == slots.valid), slots.valid + 1, slots.valid)
    valid = jnp.where(past_cut, jnp.minimum(valid, last), valid)
    counters = slots.counters
    counters = counters._replace(iterations=counters.iterations + 1,
                                 slot_iterations=counters.slot_iterations + slots.busy.shape[0],
                                 decoded=counters.decoded + jnp.sum(proposing),
                                 busy_iterations=counters.busy_iterations + slots.busy)
    slots = slots._replace(proposal=proposal, cache=cache, valid=valid, counters=counters,
                           ahead_decoded=slots.ahead_decoded + (proposing & slots.ahead))
    slots = _finish_steps(slots, lm, finishing, run_ahead, schedule)
    if run_ahead and schedule.num_mcmc_steps and not schedule.token_budget:
        slots = _run_ahead(slots, lm, schedule)
    return slots


def _proposing(slots: Slots):
    """[W] the slots that feed a token at their next iteration: busy, with a proposal to extend."""
    return slots.busy & (slots.proposal.length < slots.limit)


def feeding_position(slots: Slots):
    """[W] the position each proposing slot feeds at its next iteration: its proposal's last token."""
    return slots.current.prompt_length + slots.proposal.length - 1


def advance(slots: Slots, lm, max_iterations, min_busy, run_ahead, schedule: Schedule, span: int | None = None) -> Slots:
    """Iterate while at least `min_busy` slots are busy or running ahead (1: until every slot is
    idle), for at most `max_iterations`: the host sets `min_busy` to hear of a freed slot it can
    refill, or of a drain it can narrow the batch for. A slot ahead that has done all its steps
    counts until its chain's step in flight settles it, so every slot counted holds a chain. Only
    a loop with `run_ahead` settles bets, so once one has run with it, the rest of the run must
    (the host's queue, once empty, stays empty). With a `span` (static), the model attends below
    it (`LanguageModel.within`: loops of known trip count, which XLA:GPU runs without waiting on
    the host at every trip) and the loop also stops before a slot would feed a position at or past
    it, for the host to pick a wider span."""
    start = slots.counters.iterations
    if span is not None:
        lm = lm.within(span)

    def running(slots):
        going = (jnp.sum(slots.busy | slots.ahead) >= min_busy) & (slots.counters.iterations - start < max_iterations)
        if span is not None:
            going &= jnp.max(jnp.where(_proposing(slots), feeding_position(slots), 0)) < span
        return going

    return jax.lax.while_loop(running, lambda slots: iterate(slots, lm, run_ahead, schedule), slots)


def thinned_steps(rng_key, state: SuffixMHState, lm, schedule: Schedule,
                  static_attention: bool | None = None) -> tuple[SuffixMHState, StepRecord]:
    """The MH steps of a `Schedule.thinned` on every row of a lockstep sampler state, each row at
    its own pace in the slot loop (a row whose proposal ended starts its next step while the
    others decode), then restore from the backup what each row's last rejection overwrote, so that
    the cache agrees with the state again. Row r's randomness comes from the r-th key split from
    `rng_key`. `static_attention`: as `generation.extend`'s (one slot loop per attention span,
    each until a slot would feed past it; the last, over the whole cache, runs to the end)."""
    seqs = state.seqs
    rows = seqs.length.shape[0]
    keys = jax.random.split(rng_key, rows)
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    busy = jnp.ones(rows, bool)
    # the lockstep state's cache holds every completion token but the last (never fed), and is the
    # backup too at first
    fed = seqs.prompt_length + seqs.length - 1
    slots = _slots(seqs, seqs, state.cache, state.cache, fed, fed, busy, jnp.arange(rows), keys, schedule)
    slots = _start_steps(slots._replace(step=jnp.ones(rows, jnp.int32)), lm, busy, schedule)  # step 0: no extension
    for span in spans.decode_spans(seqs.tokens.shape[1], static_attention):
        slots = advance(slots, lm, jnp.iinfo(jnp.int32).max, 1, False, schedule, span)
    end = slots.current.prompt_length + slots.current.length - 1
    return SuffixMHState(slots.current, _copy_slots(slots.cache, slots.backup, slots.valid < end)), slots.steps
