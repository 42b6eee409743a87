"""The engine's device side: W slots, each running its own chain, advanced one token per slot per
iteration inside one compiled loop (DESIGN section 7). The engine's host (`scheduler`) and the
NumPyro kernels (`ppl_ecmh.numpyro.kernels`) both drive chains through it.

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
`ppl_ecmh.samplers.mh.log_acceptance`, adds the step to the tally of its draw in progress, and starts its
next step in the same iteration, while the other slots go on decoding. When a step completes a
draw, the draw (its tokens and its tally) goes into the slot's ring of draw records, at the
chain's count of draws modulo the ring's size. A chain pauses once it has `stop` draws: the host
admits the next (problem, chain) into the slot, or a kernel raises `stop` to go on.

Randomness is keyed by work: the cut, the acceptance and every proposal token of step s of a chain
come from fold_in(chain_key, s) and the token's completion index, so a chain's draws do not depend
on the slot count, on its neighbours, on when it was admitted or on when it paused.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.engine.schedule import Schedule, best_of_n_score
from ppl_ecmh.lm.generation import (Sequences, ends_with_eos, is_eos, prefill, sample_tokens, sequence_log_prob,
                                    teacher_force, token_statistics)
from ppl_ecmh.samplers.mh import cut_log_probs, log_acceptance, select_rows

CUT, ACCEPT, TOKEN = 0, 1, 2  # the uses of a step's key


class StepRecord(NamedTuple):
    """Per slot and step [W, steps kept]: what each step did (step s at s modulo the steps kept)."""

    accepted: jax.Array
    accept_prob: jax.Array
    cut: jax.Array
    old_suffix_length: jax.Array
    new_suffix_length: jax.Array  # = tokens decoded by the step


class Tally(NamedTuple):
    """What the steps of a draw did: over its MH steps (`moves` of them) the acceptances and their
    probabilities summed, the suffix lengths summed; the last step's cut; every token it decoded."""

    moves: jax.Array
    accepted: jax.Array
    accept_prob: jax.Array
    cut: jax.Array
    old_suffix_length: jax.Array
    new_suffix_length: jax.Array
    generated: jax.Array


class DrawRecord(NamedTuple):
    """Per slot and draw [W, draws kept, ...]: the state a draw keeps, its tally, and of its last
    step the decision and the sequence it did not keep (the proposal it rejected, or the state an
    accepted proposal replaced): with the draw, both sides of that step, for the chain explorer."""

    tokens: jax.Array  # [W, D, T] completion tokens (0 past the length)
    entropy: jax.Array  # [W, D, T]
    length: jax.Array
    log_target: jax.Array
    tally: Tally
    last_accepted: jax.Array  # [W, D] bool
    last_accept_prob: jax.Array  # [W, D]
    unkept_tokens: jax.Array  # [W, D, T]
    unkept_entropy: jax.Array  # [W, D, T]
    unkept_length: jax.Array  # [W, D]


LAST_STEP_FIELDS = ("last_accepted", "last_accept_prob", "unkept_tokens", "unkept_entropy", "unkept_length")


class Counters(NamedTuple):
    iterations: jax.Array  # [] decode iterations
    slot_iterations: jax.Array  # [] slots x iterations, summed over the widths the batch had
    decoded: jax.Array  # [] proposal tokens decoded, over all slots
    saved: jax.Array  # [] slot caches copied into their backup before a proposal overwrote them
    restored: jax.Array  # [] slot caches copied back from their backup after a rejection
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
    step: jax.Array  # [W] the step in flight, numbered from the chain's start
    busy: jax.Array  # [W] the slot's chain has a step in flight
    owner: jax.Array  # [W] the host's number for the chain the slot holds; -1: the slot is free
    drawn: jax.Array  # [W] draws the chain has completed
    stop: jax.Array  # [W] draws after which the chain pauses
    chain_key: jax.Array  # [W, 2] raw PRNG keys, one per chain
    tally: Tally  # [W] the draw in progress
    initial_generated: jax.Array  # [W] tokens decoded by the steps before the first draw's
    steps: StepRecord
    draws: DrawRecord
    counters: Counters


def _step_key(chain_key, step, use):
    return jax.vmap(lambda k, s: jax.random.fold_in(jax.random.fold_in(k, s), use))(chain_key, step)


def _tally(*shape) -> Tally:
    ints = lambda: jnp.zeros(shape, jnp.int32)  # every field its own array (see `empty_slots`)
    return Tally(ints(), jnp.zeros(shape), jnp.zeros(shape), ints(), ints(), ints(), ints())


def empty_slots(lm, width: int, prompt_block: int, schedule: Schedule, draws_kept: int | None = None,
                steps_kept: int | None = None) -> Slots:
    """W idle slots for prompts of at most `prompt_block` tokens, keeping the records of the last
    `draws_kept` draws and `steps_kept` steps of each chain (default: all the schedule's)."""
    total = schedule.max_new_tokens
    draws, steps = draws_kept or schedule.num_draws, steps_kept or schedule.num_steps
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)
    # every field its own array, so the slots can be donated to a compiled step whole
    seqs = lambda: Sequences(ints(width, prompt_block + total), jnp.ones(width, jnp.int32), ints(width),
                             *(jnp.zeros((width, total), jnp.float32) for _ in range(3)))
    cache = lambda: lm.init_cache(width, prompt_block + total)
    return Slots(
        current=seqs(), proposal=seqs(), cache=cache(), backup=cache(), valid=ints(width), backed=ints(width),
        cut=ints(width), limit=ints(width), step=ints(width), busy=jnp.zeros(width, bool),
        owner=jnp.full(width, -1, jnp.int32), drawn=ints(width), stop=ints(width),
        chain_key=jnp.zeros((width, 2), jnp.uint32), tally=_tally(width), initial_generated=ints(width),
        steps=StepRecord(jnp.zeros((width, steps), bool), jnp.zeros((width, steps)), ints(width, steps),
                         ints(width, steps), ints(width, steps)),
        draws=DrawRecord(ints(width, draws, total), jnp.zeros((width, draws, total)), ints(width, draws),
                         jnp.zeros((width, draws)), _tally(width, draws), jnp.zeros((width, draws), bool),
                         jnp.zeros((width, draws)), ints(width, draws, total), jnp.zeros((width, draws, total)),
                         ints(width, draws)),
        counters=Counters(ints(), ints(), ints(), ints(), ints(), ints(width)),
    )


def _has_steps(step, drawn, stop, schedule: Schedule):
    """Whether a chain at `step`, with `drawn` draws, has a step to run before its `stop`."""
    return (step < schedule.num_initial_steps) | (drawn < stop)


def admit(slots: Slots, lm, slot_index, prompts, prompt_length, chain_key, owner, completions, stop,
          schedule: Schedule) -> Slots:
    """Start chains numbered `owner` [R] in the slots `slot_index` [R] (out of range: ignored) from
    prompts [R, prompt_block], prefilled in one forward pass, each to pause after `stop` [R] draws.
    With `completions` [R, T] (each ending at its first EOS, or T long), the chains start from
    those, scored in the same pass: step 0 then has nothing to extend, and the chain's first move
    is its first MH step."""
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
    busy = _has_steps(first, first, stop, schedule)
    slots = slots._replace(
        current=jax.tree.map(put, slots.current, fresh), cache=jax.tree.map(put, slots.cache, cache),
        valid=put(slots.valid, prompt_length + fresh.length), backed=put(slots.backed, first),
        step=put(slots.step, first), busy=put(slots.busy, busy), owner=put(slots.owner, owner),
        drawn=put(slots.drawn, first), stop=put(slots.stop, stop), chain_key=put(slots.chain_key, chain_key),
        tally=jax.tree.map(put, slots.tally, _tally(rows)), initial_generated=put(slots.initial_generated, first),
        steps=jax.tree.map(lambda record: record.at[slot_index].set(jnp.zeros((), record.dtype), mode="drop"),
                           slots.steps),
    )
    return _start_steps(slots, lm, put(jnp.zeros_like(slots.busy), busy), schedule)


def resume(slots: Slots, lm, stop, schedule: Schedule) -> Slots:
    """Move the chains' `stop` [W] to later draws; chains paused before it start their next step."""
    waking = ~slots.busy & (slots.owner >= 0) & _has_steps(slots.step, slots.drawn, stop, schedule)
    slots = slots._replace(stop=stop, busy=slots.busy | waking)
    return _start_steps(slots, lm, waking, schedule)


def _start_steps(slots: Slots, lm, starting, schedule: Schedule) -> Slots:
    """For the slots `starting`, begin their step `slots.step`: choose the cut, make the working
    cache hold the current state up to it and the backup hold what the proposal will overwrite,
    and reset the proposal."""
    current, step = slots.current, slots.step
    if schedule.fresh or schedule.token_budget:  # a candidate from scratch (best-of-N: within its budget)
        cut = jnp.zeros_like(step)
        limit = jnp.full_like(step, schedule.max_new_tokens)
        if schedule.token_budget:
            limit = jnp.minimum(limit, schedule.token_budget - slots.tally.generated)
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


def _finish_steps(slots: Slots, lm, finishing, schedule: Schedule) -> Slots:
    """For the slots `finishing`, accept or reject their proposal, record the step, tally it, record
    the draw it completes, move on."""
    current, proposal, cut, step, tally = slots.current, slots.proposal, slots.cut, slots.step, slots.tally
    rows = jnp.arange(step.shape[0])
    mh_step = jnp.zeros_like(finishing)
    if schedule.token_budget:  # best-of-N: a draw's first candidate, then any that scores higher
        limit = schedule.max_new_tokens
        better = best_of_n_score(lm, proposal, limit) > best_of_n_score(lm, current, limit)
        accepted = finishing & ((tally.generated == 0) | better)
        accept_prob = accepted.astype(jnp.float32)
    elif schedule.fresh:
        accepted, accept_prob = finishing, jnp.ones(step.shape)
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

    decoded, old_suffix = proposal.length - cut, jnp.where(mh_step, current.length - cut, 0)
    kept_steps = slots.steps.cut.shape[1]
    at = jnp.where(finishing, step % kept_steps, kept_steps)  # out of range: not recorded
    record = lambda buffer, value: buffer.at[rows, at].set(value, mode="drop")
    steps = StepRecord(record(slots.steps.accepted, accepted), record(slots.steps.accept_prob, accept_prob),
                       record(slots.steps.cut, cut), record(slots.steps.old_suffix_length, old_suffix),
                       record(slots.steps.new_suffix_length, decoded))
    moved = finishing & mh_step
    add = lambda total, value, where: total + jnp.where(where, value, 0).astype(total.dtype)
    tally = Tally(add(tally.moves, 1, moved), add(tally.accepted, accepted, moved),
                  add(tally.accept_prob, accept_prob, moved), jnp.where(finishing, cut, tally.cut),
                  add(tally.old_suffix_length, old_suffix, moved), add(tally.new_suffix_length, decoded, moved),
                  add(tally.generated, decoded, finishing))

    if schedule.token_budget:  # a draw ends with its budget
        completes = finishing & (tally.generated >= schedule.token_budget)
    else:
        completes = finishing & schedule.completes_draw(step)
    initial = finishing & (step + 1 == schedule.num_initial_steps)  # the steps before the first draw's end
    kept_draws = slots.draws.length.shape[1]
    draw = jnp.where(completes, slots.drawn % kept_draws, kept_draws)
    put = lambda buffer, value: buffer.at[rows, draw].set(value, mode="drop")
    unkept = select_rows(accepted, current, proposal)
    (tokens, entropy), (unkept_tokens, unkept_entropy) = _completion(new), _completion(unkept)
    draws = DrawRecord(put(slots.draws.tokens, tokens), put(slots.draws.entropy, entropy),
                       put(slots.draws.length, new.length),
                       put(slots.draws.log_target, schedule.alpha * sequence_log_prob(new)),
                       jax.tree.map(put, slots.draws.tally, tally), put(slots.draws.last_accepted, accepted),
                       put(slots.draws.last_accept_prob, accept_prob), put(slots.draws.unkept_tokens, unkept_tokens),
                       put(slots.draws.unkept_entropy, unkept_entropy), put(slots.draws.unkept_length, unkept.length))
    restart = completes | initial
    drawn, next_step = slots.drawn + completes, step + finishing
    slots = slots._replace(
        current=new, valid=valid, backed=backed, step=next_step, drawn=drawn,
        busy=slots.busy & _has_steps(next_step, drawn, slots.stop, schedule), steps=steps, draws=draws,
        tally=jax.tree.map(lambda value: jnp.where(restart, jnp.zeros((), value.dtype), value), tally),
        initial_generated=add(slots.initial_generated, tally.generated, initial))
    return _start_steps(slots, lm, finishing & slots.busy, schedule)


def _completion(seqs: Sequences):
    """[W, T] completion tokens and entropies of `seqs`, 0 past each length."""
    index = jnp.arange(seqs.max_new_tokens)[None, :]
    inside = index < seqs.length[:, None]
    tokens = jnp.take_along_axis(seqs.tokens, seqs.prompt_length[:, None] + index, axis=1)
    return jnp.where(inside, tokens, 0), jnp.where(inside, seqs.entropy, 0.0)


def release(slots: Slots, free) -> Slots:
    """The slots `free` [W] (bool) handed back: the host has collected their chains' records."""
    return slots._replace(owner=jnp.where(free, -1, slots.owner))


def narrowed(slots: Slots, keep) -> Slots:
    """The slots `keep` [W'] alone, in that order: a narrower batch for a run's drain."""
    return jax.tree.map(lambda leaf: leaf if jnp.ndim(leaf) == 0 else leaf[keep], slots)


def iterate(slots: Slots, lm, schedule: Schedule) -> Slots:
    """One decode iteration of every slot (see the module docstring)."""
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
    slots = slots._replace(proposal=proposal, cache=cache, valid=valid, counters=counters)
    return _finish_steps(slots, lm, finishing, schedule)


def _proposing(slots: Slots):
    """[W] the slots that feed a token at their next iteration: busy, with a proposal to extend."""
    return slots.busy & (slots.proposal.length < slots.limit)


def feeding_position(slots: Slots):
    """[W] the position each proposing slot feeds at its next iteration: its proposal's last token."""
    return slots.current.prompt_length + slots.proposal.length - 1


def advance(slots: Slots, lm, max_iterations, min_busy, schedule: Schedule, span: int | None = None,
            need=None) -> Slots:
    """Iterate while at least `min_busy` slots are busy (1: until every slot is idle), for at most
    `max_iterations`: the host sets `min_busy` to hear of a freed slot it can refill, or of a drain
    it can narrow the batch for. With `need` [W] instead, iterate until every chain has `need`
    draws (and its steps before the first draw), the others going on meanwhile up to their stop:
    a kernel's wait for its next draw. With a `span` (static), the model attends below it
    (`LanguageModel.within`: loops of known trip count, which XLA:GPU runs without waiting on the
    host at every trip) and the loop also stops before a slot would feed a position at or past it,
    for the caller to pick a wider span."""
    start = slots.counters.iterations
    if span is not None:
        lm = lm.within(span)

    def running(slots):
        if need is None:
            going = jnp.sum(slots.busy) >= min_busy
        else:
            going = jnp.any(slots.busy & _has_steps(slots.step, slots.drawn, need, schedule))
        going &= slots.counters.iterations - start < max_iterations
        if span is not None:
            going &= jnp.max(jnp.where(_proposing(slots), feeding_position(slots), 0)) < span
        return going

    return jax.lax.while_loop(running, lambda slots: iterate(slots, lm, schedule), slots)


# the per-draw statistics every sampler reports, as `draw_statistics` names them
STAT_FIELDS = ("log_target", "length", "accepted", "accept_prob", "cut", "old_suffix_length", "new_suffix_length",
               "num_generated")


def draw_statistics(draws: DrawRecord) -> dict:
    """The samplers' per-draw statistics (any leading shape) from draw records: `accepted` the
    fraction of a draw's MH steps accepted, `accept_prob` their mean probability, `cut` the last
    cut, the suffix lengths of its MH steps summed, `num_generated` every token it decoded. A draw
    without MH steps (a fresh completion, best-of-N's pick) was accepted, its length the new suffix."""
    tally = draws.tally
    moved = tally.moves > 0
    mean = lambda total: jnp.where(moved, total / jnp.maximum(tally.moves, 1), 1.0)
    return dict(log_target=draws.log_target, length=draws.length, accepted=mean(tally.accepted),
                accept_prob=mean(tally.accept_prob), cut=tally.cut, old_suffix_length=tally.old_suffix_length,
                new_suffix_length=jnp.where(moved, tally.new_suffix_length, draws.length),
                num_generated=tally.generated)
