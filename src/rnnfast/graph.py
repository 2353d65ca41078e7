"""A DAG of canonical ops and its one executor; free of any framework's names.

A :class:`Graph` is a list of :class:`Step` in execution (topological) order. Each
step runs one op on tensors named by *keys* (any hashable: a frontend names them as
it likes) and binds the op's outputs to new keys. Masks travel beside the values
along the same edges: every key has a value and a mask (None: no mask). Several
inputs and outputs, one op used by several steps (a shared layer: the same weights,
called on different tensors) and ops fed extra tensors (``initial_state``: the
recurrent layers' starting states) are all steps of the same kind.

The op protocol (the nodes of :mod:`rnnfast.model_keras` follow it):

``op.run(x, mask, num_threads, **extra)`` -> ``(outputs, output_masks)``, two lists.
``x`` and ``mask`` are one tensor and its mask, or -- when ``op.multi_input`` is
true -- lists of them, one per input edge. ``extra`` holds ``initial_state`` (a list
of tensors) when the step was given states, and the step's ``options`` (e.g.
``use_mask=False``: the op computes without the mask but passes it on).

The executor frees a tensor after its last reader has run (a long chain keeps only
the tensors still needed), so memory stays that of the widest cut of the graph.
"""

from collections.abc import Hashable

__all__ = ["Step", "Graph", "TRUE", "FALSE", "mask_or", "leaves", "map_structure"]

#: Load-time mask tokens: a mask that marks every step valid (equivalent to no mask),
#: and one that marks none. Frontends and ops build other tokens as tuples.
TRUE, FALSE = "all-valid", "none-valid"


def mask_or(tokens):
    """The token of the OR of masks (tokens): flattened, FALSE dropped, TRUE absorbing."""
    items = set()
    for t in tokens:
        if t == TRUE:
            return TRUE
        if t == FALSE:
            continue
        if isinstance(t, tuple) and t and t[0] == "or":
            items.update(t[1])
        else:
            items.add(t)
    if not items:
        return FALSE
    if len(items) == 1:
        return items.pop()
    return ("or", frozenset(items))


class Step:
    """One call of an op: ``op`` on the tensors ``inputs`` (keys), producing
    ``outputs`` (keys, one per op output); ``states``: keys of extra tensors passed
    as ``initial_state`` (empty for none); ``options``: keywords for ``op.run``."""

    __slots__ = ("op", "inputs", "outputs", "states", "options")

    def __init__(self, op, inputs, outputs, states=(), options=None):
        self.op = op
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.states = list(states)
        self.options = dict(options or {})

    def __repr__(self):
        return "Step(%r, %r -> %r%s)" % (
            self.op,
            self.inputs,
            self.outputs,
            ", states=%r" % (self.states,) if self.states else "",
        )


class Graph:
    """Steps in execution order, the graph's input keys and its outputs (a key or a
    nested list / dict of keys)."""

    def __init__(self, steps, inputs, outputs):
        self.steps = list(steps)
        self.inputs = list(inputs)
        self.outputs = outputs
        out_keys = set(leaves(outputs))
        known = set(self.inputs)
        last_use = {}
        for i, step in enumerate(self.steps):
            for k in step.inputs + step.states:
                if k not in known:
                    raise ValueError("graph step %d (%r) reads %r before it is computed" % (i, step.op, k))
                last_use[k] = i
            known.update(step.outputs)
        for k in out_keys:
            if k not in known:
                raise ValueError("graph output %r is never computed" % (k,))
        # keys to drop after each step (read for the last time there, not an output)
        self._free: list[list[Hashable]] = [[] for _ in self.steps]
        for k, i in last_use.items():
            if k not in out_keys:
                self._free[i].append(k)
        self._compile()

    def _compile(self):
        """The run plan, built once: every key numbered (a slot in a list, not a dict
        entry), and per step its input, state, output and freed slots and its options;
        the outputs' slots and, when they are a flat list or one key, no structure to
        walk per call. The ops are read from :attr:`steps` at each run (a copy of the
        graph may swap them, as a pickled model does), the plan only from the keys."""
        slot: dict[Hashable, int] = {}
        for k in list(self.inputs) + [k for step in self.steps for k in step.outputs]:
            slot.setdefault(k, len(slot))
        self._num_slots = len(slot)
        self._input_slots = [slot[k] for k in self.inputs]
        self._plan = [
            (
                [slot[k] for k in step.inputs],
                [slot[k] for k in step.states],
                dict(step.options),
                [slot[k] for k in step.outputs],
                [slot[k] for k in free],
            )
            for step, free in zip(self.steps, self._free)
        ]
        self._slot = slot
        o = self.outputs
        flat = isinstance(o, list) and not any(isinstance(v, (list, dict)) for v in o)
        self._flat_outputs = [slot[k] for k in o] if flat else None
        self._one_output = slot[o] if not isinstance(o, (list, dict)) else None

    @property
    def ops(self):
        """The distinct ops, in order of first use (a shared op once)."""
        seen, out = set(), []
        for step in self.steps:
            if id(step.op) not in seen:
                seen.add(id(step.op))
                out.append(step.op)
        return out

    def run(self, feeds, num_threads=None, masks=None, keep_all=False):
        """Run the graph.

        Parameters
        ----------
        feeds : list
            One tensor per input key, in order.
        num_threads : int, optional
            Passed to every op.
        masks : list, optional
            A mask (or None) per input.
        keep_all : bool
            Keep every tensor and return ``(values, masks)`` as dicts by key (for
            describing the graph: each op's output shapes).

        Returns
        -------
        (values, masks) of the outputs, each in the structure of ``outputs``.
        """
        if len(feeds) != len(self.inputs):
            raise ValueError("the graph takes %d inputs, got %d" % (len(self.inputs), len(feeds)))
        values: list = [None] * self._num_slots
        mask_of: list = [None] * self._num_slots
        for i, x in zip(self._input_slots, feeds):
            values[i] = x
        if masks is not None:
            for i, m in zip(self._input_slots, masks):
                mask_of[i] = m
        for step, (ins, states, options, outs, free) in zip(self.steps, self._plan):
            op = step.op
            if getattr(op, "multi_input", False):
                x = [values[i] for i in ins]
                m = [mask_of[i] for i in ins]
            else:
                x, m = values[ins[0]], mask_of[ins[0]]
            if states:
                out_values, out_masks = op.run(x, m, num_threads, initial_state=[values[i] for i in states], **options)
            else:
                out_values, out_masks = op.run(x, m, num_threads, **options)
            if not keep_all:
                for i in free:
                    values[i] = mask_of[i] = None
            for i, v, mk in zip(outs, out_values, out_masks):
                values[i] = v
                mask_of[i] = mk
        if keep_all:
            return {k: values[i] for k, i in self._slot.items()}, {k: mask_of[i] for k, i in self._slot.items()}
        if self._one_output is not None:
            return values[self._one_output], mask_of[self._one_output]
        if self._flat_outputs is not None:
            return [values[i] for i in self._flat_outputs], [mask_of[i] for i in self._flat_outputs]
        slot = self._slot
        return (
            map_structure(lambda k: values[slot[k]], self.outputs),
            map_structure(lambda k: mask_of[slot[k]], self.outputs),
        )


def leaves(s):
    """The keys of a structure (a key, or nested lists / dicts of them), in order."""
    if isinstance(s, dict):
        return [k for v in s.values() for k in leaves(v)]
    if isinstance(s, list):
        return [k for v in s for k in leaves(v)]
    return [s]


def map_structure(fn, *structures):
    """``fn`` applied leaf by leaf to structures of the same shape (nested lists /
    dicts), in that shape."""
    s0 = structures[0]
    if type(s0) is list and len(structures) == 1:  # the common case: a list (of leaves)
        return [map_structure(fn, v) if isinstance(v, (list, dict)) else fn(v) for v in s0]
    if isinstance(s0, dict):
        return {k: map_structure(fn, *(s[k] for s in structures)) for k in s0}
    if isinstance(s0, list):
        return [map_structure(fn, *items) for items in zip(*structures)]
    return fn(*structures)
