"""How a layer call runs: every tuning constant of the engine, and the planning
functions that turn a layer's shapes into the compiled core's plan.

A layer call (:meth:`rnnfast.layers.RNNLayer.forward`) runs one of two strategies
(``src/rnnfast/c/engine.h``):

- the **item** strategy: (direction, batch block) work items, each with its own time
  loop, no barrier per step;
- the **blocked** strategy: for layers whose gate columns are laid out in unit blocks,
  (direction, batch block, unit block) tasks shared by the team, claimed step by step
  (a thread that is not running never holds up a step: its tasks are taken over), so
  that a small batch still uses every core.

A plan depends on the shapes only, never on the thread count (but the team size
itself, and whether a one-step call shares its tasks with the products' partner thread:
uses_partner), so results are bitwise identical for any number of threads.

Measured: see bench/README.md.
"""

import os
from typing import NamedTuple

from . import _kernels

#: Elements of the input projection buffer per chunk (all directions), at most: bounds
#: the kernel's scratch memory independently of the sequence length.
CHUNK_ELEMENTS = 1 << 21
#: ... and the target on the blocked strategy: about 1 MB, so that a chunk's projection
#: is still in the core's cache when its steps read it (at least one step). The item
#: strategy keeps CHUNK_ELEMENTS: it starts two parallel regions per chunk.
CHUNK_ELEMENTS_CACHED = 1 << 18
#: Batch-major input (``batch_first``) below this many rows (but more than one) is
#: transposed instead: the kernel projects a batch-major step's rows together, and the
#: packed product's register tile has this many rows.
BATCH_FIRST_MIN_ROWS = int(_kernels.RNN_TILE_ROWS)
#: Units per unit block, at least, and the most blocks: GRU (reset-after), LSTM without
#: projection and SimpleRNN lay their gate columns out in unit blocks, and wide layers
#: run the blocked strategy.
UNIT_BLOCK = 64
MAX_UNIT_BLOCKS = 8
#: The blocked strategy synchronises its threads once per step: a step with less work
#: than this many flops per thread uses fewer threads (the tasks, and so the results,
#: are the same whatever the team size).
MIN_STEP_FLOPS_PER_THREAD = 40_000
#: Item strategy: target rows per (direction, batch block) work item, at most
#: MAX_BATCH_BLOCKS blocks, and at least two from TWO_BLOCKS_MIN_ROWS rows up (so that
#: a batch of 16-63 still has work for two threads).
ROWS_PER_BLOCK = 32
MAX_BATCH_BLOCKS = 8
TWO_BLOCKS_MIN_ROWS = 16
#: Blocked strategy: rows per batch block, at most (the product per task is rows x
#: the block's gate columns x Ho; 64 rows keep it efficient).
BLOCKED_ROWS_PER_BLOCK = 64
#: Item strategy: rows per projection task, at least, and tasks per direction and
#: chunk, at most (so the seed's 320 rows are 8 even tasks for two or four threads,
#: not 5); each task a whole number of the packed product's register tiles.
PROJ_MIN_ROWS = 32
PROJ_MAX_TASKS = 8
#: Blocked strategy: spins of the wait for a phase (a step, a chunk's projection)
#: before it sleeps (c/openmp.h).
BARRIER_SPINS = 3000
#: ... and then on for up to this many times the thread's own work in the phase, at
#: most BARRIER_MAX_US microseconds: a partner that is running finishes within about
#: one task of the waiter, and a task of a large batch (GRU H=256, B=64: ~100 us) is
#: longer than BARRIER_SPINS (~35-55 us), so with a fixed spin the waiter slept and
#: was woken by a futex every step, and the caller's sleep backed the call off to one
#: thread (c/openmp.h).
BARRIER_WORK_FACTOR = 2
BARRIER_MAX_US = 2000
#: Blocked strategy: spins a thread that has run its own tasks of a phase gives the
#: others before it takes their unclaimed tasks over (a descheduled partner then costs
#: at most the task it had claimed; see c/openmp.h).
STEAL_SPINS = 200
#: A call whose recurrent work is under this many flops per thread runs on fewer
#: threads: waking a sleeping team and joining it costs more than such a call gains
#: (the results are the same whatever the team size).
MIN_CALL_FLOPS_PER_THREAD = 4_000_000
#: The cost of a recurrent flop in each precision of the products, against float32's: the
#: work the thresholds above weigh (team_size; MIN_PARTNER_STEP_FLOPS below stays on flops:
#: one bf16 GRU H=256 step ran 1.16x faster with the partner). An int8 step costs a fraction
#: of a float32 one of the same flops, so the same split gained nothing: batch 1, T = 100,
#: on a Xeon, two threads over one (one process, ten alternated rounds): int8 GRU H=128
#: 0.64x, LSTM H=128 0.84x, GRU H=192 0.92x, GRU H=256 1.33x. bf16 at batch 1 runs a row per
#: tile instruction, no cheaper than float32 (GRU H=128 two threads 1.22x one): as float32.
FLOP_COST = {"float32": 1.0, "bf16": 1.0, "int8": 0.25}
#: A one-step call (T = 1) that this leaves on one thread (a decoder step at B = 1:
#: waking a sleeping OpenMP partner costs more than the step) runs its unit blocks'
#: tasks on the caller and the products' polling partner thread (c/rowops.team.h:
#: the caller never waits for it to wake) where it may use 2 threads or more and its
#: recurrent product has at least this many flops (uses_partner). Measured (Zen 4, B = 1,
#: the layer alone, partner on a free core, its caches cold / warm): GRU H=256 (393
#: kflop) 45 -> 28 / 26 -> 16 us, H=192 31 -> 22 / 17 -> 12 us, H=128 (98 kflop) 25 ->
#: 19 / 10.1 -> 9.5 us: under this a partner asleep costs the caller a futex wake (a few
#: us) for little gain.
MIN_PARTNER_STEP_FLOPS = 200_000
#: A core's L2 cache in bytes where the machine does not say (sysfs; read once, see
#: l2_bytes).
L2_BYTES_FALLBACK = 1 << 20
#: A blocked layer whose recurrent weights take at least this share of one core's L2
#: keeps its team on a busy machine (keeps_team): a thread alone holds them beside the
#: chunk's projection (CHUNK_ELEMENTS_CACHED, about 1 MB), so from half of a 2 MB L2 on
#: it streams them from L3 every step. Measured under a busy loop on one of two cores
#: (2 MB L2), team kept against backing off, time over one thread's: LSTM H=256
#: T=1000 B=1 0.88x / 0.98x, GRU H=256 0.87x / 0.98x, LSTM H=512 T=100 0.53x / 0.79x.
KEEP_TEAM_L2_SHARE = 0.5
#: A layer laid out in unit blocks still runs the item strategy (rows, or a direction, per
#: thread: no barrier per step) on a team of two or more where the recurrent weights one
#: item's thread reads take at most this share of one core's L2 and the call has two items
#: or more (prefers_items). Measured on a Xeon (2 MB L2; float32, T = 100, two threads, in
#: one process, ten alternated rounds), item over blocked: LSTM H=256 B=64 1.16x, H=192
#: 1.43x, H=128 1.14x; GRU H=256 B=64 0.98-1.23x, H=384 (1.8 MB) 1.09x, H=128 B=16 1.11x;
#: BiLSTM H=256 B=1 1.33x, BiGRU 1.15x; where the weights overflow L2 (LSTM / GRU H=512
#: B=64, 3-4 MB) 0.99-1.00x, BiLSTM H=256 B=32 (2 MB a thread) 0.98x, and on one thread
#: the blocked strategy is ahead (GRU H=128 B=64 0.85x), so these stay blocked. Measured
#: again hours later: 0.93-1.04x (and 0.94-1.07x with a busy loop on one of the two cores):
#: the gain is the box's quieter hours'. The results are the same bits either way.
ITEM_L2_SHARE = 0.9
#: The products outside the recurrent layers (Dense, Conv1D, attention:
#: rnnfast._products): one with under this many flops per thread runs on fewer threads
#: (measured, (M x 256) (256 x 256) float32: 2 threads break even at M = 128, 17 Mflop;
#: 1.38x at 34 Mflop; 0.56-0.8x below 8 Mflop).
MIN_PRODUCT_FLOPS_PER_THREAD = 8_000_000

#: Right-padded batches (PyTorch lengths, Keras post-padding masks): rows whose
#: sequence has ended drop out of each step's work (rows sorted by length once per
#: call; bitwise the same results). False: every row steps every step (for
#: bench/padding.py's padded baseline).
SKIP_PADDING = True

_kernels.barrier_spins(BARRIER_SPINS)
_kernels.barrier_spin_time(BARRIER_WORK_FACTOR, BARRIER_MAX_US)
_kernels.steal_spins(STEAL_SPINS)

ITEM = int(_kernels.RNN_STRATEGY_ITEM)
BLOCKED = int(_kernels.RNN_STRATEGY_BLOCKED)


class Plan(NamedTuple):
    """How one layer call runs (the compiled core's ``rnn_plan``)."""

    strategy: int  #: ITEM or BLOCKED
    unit_blocks: int  #: unit blocks of the layer's gate columns
    batch_rows: int  #: rows per batch block
    chunk: int  #: steps per projection chunk
    num_threads: int  #: the team size
    proj_min_rows: int = PROJ_MIN_ROWS
    proj_max_tasks: int = PROJ_MAX_TASKS
    keep_team: bool = False  #: keep the team on a busy machine (keeps_team)
    partner: bool = False  #: a one-step call's tasks shared with the partner thread (uses_partner)


def unit_blocks(H, blockable):
    """Unit blocks for a layer of H units: several for wide layers whose cell runs its
    per-step product on packed weights (``blockable``: GRU reset-after, LSTM without
    projection, SimpleRNN), else one (gate-major columns)."""
    return max(1, min(MAX_UNIT_BLOCKS, H // UNIT_BLOCK)) if blockable else 1


def strategy(ncb):
    """The strategy of a layer laid out in ``ncb`` unit blocks: blocked wherever the
    layout has blocks (a call's plan may still take items: prefers_items)."""
    return BLOCKED if ncb > 1 else ITEM


def prefers_items(num_threads, B, D, recurrent_bytes, l2=None):
    """Whether a layer laid out in unit blocks runs the item strategy for a call over B
    rows and D directions with ``num_threads`` threads (its team size on that strategy)
    and recurrent weights of ``recurrent_bytes`` (all directions; ``l2``: one core's L2
    bytes, None: l2_bytes()): two threads or more, two items or more, and the weights one
    item's thread reads (one direction's where each item is a direction or there is one,
    else all) within ITEM_L2_SHARE of L2."""
    nbb = -(-B // batch_rows(B, ITEM)) if B > 0 else 1
    if num_threads < 2 or D * nbb < 2:
        return False
    per_thread = recurrent_bytes / D if D == 1 or nbb == 1 else recurrent_bytes
    return per_thread <= ITEM_L2_SHARE * (l2_bytes() if l2 is None else l2)


def batch_rows(B, strategy):
    """Rows per batch block for a batch of B: a function of B only (never of threads)."""
    if B <= 0:
        return 1
    if strategy == BLOCKED:
        nblk = max(1, -(-B // BLOCKED_ROWS_PER_BLOCK))
    else:
        nblk = B // ROWS_PER_BLOCK
        if nblk < 2 and B >= TWO_BLOCKS_MIN_ROWS:
            nblk = 2
        nblk = min(MAX_BATCH_BLOCKS, max(1, nblk))
    return -(-B // nblk)


def chunk_steps(B, D, GH, strategy):
    """Steps per input-projection chunk for B rows, D directions and GH gate columns."""
    step = max(1, B * D * GH)
    chunk = max(1, CHUNK_ELEMENTS // step)
    if strategy == BLOCKED:
        chunk = min(chunk, max(1, CHUNK_ELEMENTS_CACHED // step))
    return chunk


def step_work(B, D, Ho, GH, precision="float32"):
    """A step's recurrent work: its flops, weighed by the precision's FLOP_COST."""
    return int(2 * B * Ho * GH * D * FLOP_COST[precision])


def team_size(num_threads, strategy, B, D, Ho, GH, T=None, precision="float32"):
    """Threads for the call, from its work (step_work, in ``precision``): fewer when the
    whole call (T steps; None: unknown) has little recurrent work per thread, and on the
    blocked strategy when a step has little work per thread."""
    step_flops = step_work(B, D, Ho, GH, precision)
    n = num_threads
    if T is not None:
        n = min(n, 2 * T * step_flops // MIN_CALL_FLOPS_PER_THREAD)
    if strategy == BLOCKED:
        n = min(n, step_flops // MIN_STEP_FLOPS_PER_THREAD)
    return max(1, n)


_l2: list = []  # [bytes], once read
_l3: list = []


def l2_bytes(sysfs=None):
    """One core's L2 cache in bytes: the level-2 data or unified cache that sysfs lists
    for CPU 0 (``sysfs``: that cache folder; None: this machine's, read once per
    process), else L2_BYTES_FALLBACK."""
    if sysfs is not None:
        return _read_cache(sysfs, "2") or L2_BYTES_FALLBACK
    if not _l2:
        _l2.append(_read_cache("/sys/devices/system/cpu/cpu0/cache", "2") or L2_BYTES_FALLBACK)
    return _l2[0]


def l3_bytes(sysfs=None):
    """The last-level (L3) cache CPU 0 shares, in bytes, as sysfs lists it (``sysfs`` as
    for :func:`l2_bytes`); 0 where it lists none."""
    if sysfs is not None:
        return _read_cache(sysfs, "3")
    if not _l3:
        _l3.append(_read_cache("/sys/devices/system/cpu/cpu0/cache", "3"))
    return _l3[0]


def _read_cache(sysfs, want):
    """The size of the data or unified cache of level ``want`` in a sysfs cache folder;
    0 where there is none or it cannot be read."""
    try:
        for index in sorted(os.listdir(sysfs)):
            d = os.path.join(sysfs, index)
            with open(os.path.join(d, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            if level == want and kind in ("Data", "Unified"):
                with open(os.path.join(d, "size")) as f:
                    return _cache_size(f.read())
    except (OSError, ValueError):
        pass
    return 0


#: Of the last-level cache, the share that the weights a model keeps there may take
#: (streamed_weights): the rest is for its activations and whatever else runs.
KEEP_L3_SHARE = 0.5


def streamed_weights(sizes, streamable, l3=None):
    """Which of a model's weight blocks (``sizes``: bytes each, every one read once per
    call, in order; ``streamable``: whether each can be) its calls should stream past
    the caches (read once, not kept: ``_rowops.packed_rows``' ``stream``) so that the
    others stay in the last-level cache (``l3`` bytes; None: :func:`l3_bytes`): none
    where all fit it (or it is unknown); else the largest streamable, one by one, until
    the others take at most KEEP_L3_SHARE of it. Returns their indices, a set.

    A B=1 decoder step (an 8 MB vocabulary head, 2 MB beside it, an 8 MB L3): the head
    streamed, the others read from L3 again, not DRAM (0.82 -> 0.65 ms a step, Zen 1;
    bench/README.md, session 17). Streaming costs a block that would have stayed alone
    (a 4 MB product called over and over: 99 -> 272 us), but not once the blocks
    together overflow the cache: then none stays either way."""
    l3 = l3_bytes() if l3 is None else l3
    total = sum(sizes)
    if l3 <= 0 or total <= l3:
        return set()
    out = set()
    for i in sorted((i for i in range(len(sizes)) if streamable[i]), key=lambda i: -sizes[i]):
        if total <= KEEP_L3_SHARE * l3:
            break
        out.add(i)
        total -= sizes[i]
    return out


def _cache_size(text):
    """sysfs's "2048K" (or "1M", "524288") in bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def keeps_team(recurrent_bytes, l2=None):
    """Whether a blocked layer whose recurrent weights take ``recurrent_bytes`` keeps its
    team on a busy machine instead of backing off to one thread (c/openmp.h): where the
    weights do not fit one core's L2 (``l2`` bytes; None: l2_bytes()) beside the chunk's
    projection (KEEP_TEAM_L2_SHARE), a thread alone streams them from L3 every step,
    while a team splits them so each core's share stays in its own L2 (LSTM H=512 at
    B=1: 16.3 ms on one thread, 4.6 ms on two, on a 2 MB L2). A partner that loses its
    core then costs the task it holds for about twice a phase's work (the running thread
    runs that task again itself), not a time slice."""
    return recurrent_bytes >= KEEP_TEAM_L2_SHARE * (l2_bytes() if l2 is None else l2)


def uses_partner(num_threads, strategy, team, B, D, Ho, GH, T):
    """Whether a call of T steps whose plan has this ``strategy`` and ``team`` size, on
    ``num_threads`` threads at most, shares its tasks with the products' partner thread
    instead: one step (T == 1) of the blocked strategy left on one thread, 2 threads or
    more allowed, a recurrent product of MIN_PARTNER_STEP_FLOPS or more. The tasks are
    the same (c/engine.h), so the results too."""
    return (
        strategy == BLOCKED
        and team == 1
        and T == 1
        and num_threads >= 2
        and 2 * B * D * Ho * GH >= MIN_PARTNER_STEP_FLOPS
    )


def product_team(num_threads, flops):
    """Threads for a product of ``flops`` (rnnfast._products), ``num_threads`` at most."""
    return max(1, min(num_threads, flops // MIN_PRODUCT_FLOPS_PER_THREAD))


def plan(
    *, B, D, Ho, GH, ncb, num_threads, chunk=None, T=None, recurrent_bytes=0, may_split_rows=False, precision="float32"
):
    """The plan of one call: B batch rows, D directions, state width Ho, GH gate
    columns laid out in ``ncb`` unit blocks, ``num_threads`` threads at most, and
    ``chunk`` steps per projection chunk (None: chosen here), over T steps (None: unknown),
    with recurrent weights of ``recurrent_bytes`` (all directions; keeps_team,
    prefers_items) in ``precision`` (team_size). ``may_split_rows``: the call may take the
    item strategy on a layout of unit blocks where prefers_items says so, as its results do
    not depend on the strategy (the products give a row the same bits whatever rows share
    the call: packed or reduced, not BLAS's), its rows are not sorted by length (right
    padding skipped: the longest rows would all be in the first batch block, while the
    blocked strategy splits each step's live rows evenly) and ``num_threads`` is the
    call's. The plan depends on ``num_threads`` only through its team size, that choice and
    ``partner``; the results on none of them."""
    how = strategy(ncb)
    if (
        how == BLOCKED
        and may_split_rows
        and prefers_items(team_size(num_threads, ITEM, B, D, Ho, GH, T, precision), B, D, recurrent_bytes)
    ):
        how = ITEM
    if chunk is None:
        chunk = chunk_steps(B, D, GH, how)
    n = team_size(num_threads, how, B, D, Ho, GH, T, precision)
    keep = how == BLOCKED and n > 1 and keeps_team(recurrent_bytes)
    duo = uses_partner(num_threads, how, n, B, D, Ho, GH, T)
    return Plan(how, ncb, batch_rows(B, how), int(chunk), n, keep_team=keep, partner=duo)
