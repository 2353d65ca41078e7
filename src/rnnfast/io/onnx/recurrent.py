"""ONNX ``LSTM``, ``GRU`` and ``RNN`` nodes to one canonical
:class:`~rnnfast.layers.RNNLayer` each.

ONNX weights (per direction ``d``; ``H`` = ``hidden_size``):

=====  =====================  ==========================================================
cell   gate order             W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) = [Wb | Rb]
=====  =====================  ==========================================================
LSTM   i, o, f, c             canonical (Keras) order i, f, c, o: reordered by the
                              layer's one copy (``CellWeights.gate_order``)
GRU    z, r, h                the canonical order; ``linear_before_reset=1`` is
                              reset-after (``Rb_h`` inside ``r * (.)``), 0 reset-before
RNN    one gate               ``H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)``
=====  =====================  ==========================================================

LSTM peepholes ``P`` (D, 3*H), rows i, o, f, become ``CellWeights.peephole`` (rows i, f,
o); ``clip`` and ``input_forget`` are :class:`~rnnfast.layers.RNNLayer` options.

The canonical kernel is ``W[d].T`` (I, G*H) in canonical gate order, the recurrent
kernel ``R[d].T``. ``activations`` name the gate function (LSTM/GRU ``f``) and the
candidate / output function (``g`` = ``h`` for LSTM) per direction; both directions must
use the same ones (one compiled call runs both).
"""

import numpy as np

from ...errors import FormatError, UnsupportedLayerError
from ...layers import CellWeights, RNNLayer
from ...model_onnx import RecurrentOp

__all__ = ["convert_recurrent", "RECURRENT_ATTRS", "drop_zero_states"]

_CELLS = {"LSTM": ("lstm", 4), "GRU": ("gru", 3), "RNN": ("simple", 1)}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}

#: The attributes the three recurrent ops share, and their defaults (None: absent).
_COMMON_ATTRS = dict(
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    layout=0,
)

#: Attributes of each recurrent op and their defaults (None: absent).
RECURRENT_ATTRS: dict[str, dict] = {
    "LSTM": dict(_COMMON_ATTRS, input_forget=0),
    "GRU": dict(_COMMON_ATTRS, linear_before_reset=0),
    "RNN": dict(_COMMON_ATTRS),
}

# ONNX activation -> (uses alpha, uses beta, defaults)
_ACT_PARAMS = {
    "relu": (False, False, ()),
    "tanh": (False, False, ()),
    "sigmoid": (False, False, ()),
    "softsign": (False, False, ()),
    "softplus": (False, False, ()),
    "affine": (True, True, (1.0, 0.0)),
    "leakyrelu": (True, False, (0.01,)),
    "thresholdedrelu": (True, False, (1.0,)),
    "scaledtanh": (True, True, (1.0, 1.0)),
    "hardsigmoid": (True, True, (0.2, 0.5)),
    "elu": (True, False, (1.0,)),
}


def _close(a, b):
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _kernel_activation(name, alpha, beta, where):
    """The recurrent kernels' activation for ONNX activation ``name`` with its alpha /
    beta, or UnsupportedLayerError."""
    low = name.lower()
    if low in ("relu", "tanh", "sigmoid", "softsign", "softplus"):
        return low
    if low == "hardsigmoid":
        if _close(alpha, 0.2) and _close(beta, 0.5):
            return "hard_sigmoid_keras2"
        if _close(alpha, 1 / 6) and _close(beta, 0.5):
            return "hard_sigmoid"
    elif low == "elu" and _close(alpha, 1.0):
        return "elu"
    elif low == "affine" and _close(alpha, 1.0) and _close(beta, 0.0):
        return "linear"
    args = "alpha=%g" % alpha if alpha is not None else ""
    if beta is not None:
        args += ", beta=%g" % beta
    raise UnsupportedLayerError(
        where[0],
        "activations",
        "node %r: activation %s(%s) (the recurrent kernels run Sigmoid, Tanh, Relu, Softsign, Softplus, "
        "Elu(alpha=1), Affine(1, 0) and HardSigmoid(0.2, 0.5) or (1/6, 0.5))" % (where[1], name, args),
    )


def _activations(op_type, attrs, D, where):
    names = attrs["activations"]
    per = len(_DEFAULT_ACTS[op_type])
    if names is None:
        names = _DEFAULT_ACTS[op_type] * D
        if attrs["activation_alpha"] or attrs["activation_beta"]:
            pass  # consumed below by the defaults (none of which takes one)
    if len(names) != per * D:
        raise FormatError(
            "%s node %r: %d activations for %d direction(s) (expected %d)" % (op_type, where[1], len(names), D, per * D)
        )
    alphas = list(attrs["activation_alpha"] or [])
    betas = list(attrs["activation_beta"] or [])
    out = []
    for name in names:
        if not isinstance(name, str) or name.lower() not in _ACT_PARAMS:
            raise UnsupportedLayerError(op_type, "activations", "node %r: unknown activation %r" % (where[1], name))
        ua, ub, defaults = _ACT_PARAMS[name.lower()]
        alpha = beta = None
        if ua:
            alpha = alphas.pop(0) if alphas else defaults[0]
        if ub:
            beta = betas.pop(0) if betas else defaults[1]
        out.append(_kernel_activation(name, alpha, beta, where))
    if alphas or betas:
        raise FormatError(
            "%s node %r: more activation_alpha / activation_beta values than activations" % (op_type, where[1])
        )
    groups = [tuple(out[d * per : (d + 1) * per]) for d in range(D)]
    if len(set(groups)) > 1:
        raise UnsupportedLayerError(
            op_type, "activations", "node %r: the two directions use different activations %s" % (where[1], groups)
        )
    g = groups[0]
    if op_type == "LSTM" and g[1] != g[2]:
        raise UnsupportedLayerError(
            op_type, "activations", "node %r: LSTM with g=%s and h=%s (rnnfast runs g = h)" % (where[1], g[1], g[2])
        )
    if op_type == "RNN":
        return g[0], None
    return g[1], g[0]  # activation, recurrent (gate) activation


def convert_recurrent(node, slots, ctx):
    """Convert an ONNX recurrent node (see the module docstring). ``slots``: the node's
    input slots (X, W, R, B, sequence_lens, initial_h[, initial_c, P])."""
    op_type, name = node.op_type, node.name
    where = (op_type, name)
    attrs = node.attrs
    cell, G = _CELLS[op_type]
    clip = attrs["clip"]
    if clip is not None and not (np.isfinite(clip) and clip > 0):
        raise FormatError("%s node %r: clip=%r (a positive number)" % (op_type, name, clip))
    input_forget = attrs.get("input_forget", 0)
    if input_forget not in (0, 1):
        raise FormatError("LSTM node %r: input_forget=%r" % (name, input_forget))
    direction = attrs["direction"]
    if direction not in ("forward", "reverse", "bidirectional"):
        raise FormatError("%s node %r: direction %r" % (op_type, name, direction))
    D = 2 if direction == "bidirectional" else 1
    layout = attrs["layout"]
    if layout not in (0, 1):
        raise FormatError("%s node %r: layout %r" % (op_type, name, layout))
    s = list(slots) + [None] * (8 - len(slots))

    def weight(i, what):
        slot = s[i]
        if slot is None:
            return None
        if slot[0] != "const":
            raise UnsupportedLayerError(
                op_type,
                what,
                "node %r: %s is computed in the graph; rnnfast takes weights that are initializers" % (name, what),
            )
        return np.asarray(slot[1])

    W, R, B = weight(1, "W"), weight(2, "R"), weight(3, "B")
    if W is None or R is None:
        raise FormatError("%s node %r: W and R are required" % (op_type, name))
    P = weight(7, "P") if op_type == "LSTM" else None
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != D or R.shape[0] != D or W.shape[1] % G or W.shape[1] == 0:
        raise FormatError(
            "%s node %r: W %s / R %s do not fit %d direction(s) of %d gates" % (op_type, name, W.shape, R.shape, D, G)
        )
    H = W.shape[1] // G
    I = W.shape[2]
    if attrs["hidden_size"] is not None and attrs["hidden_size"] != H:
        raise FormatError("%s node %r: hidden_size=%d but W holds %d units" % (op_type, name, attrs["hidden_size"], H))
    if R.shape != (D, G * H, H):
        raise FormatError("%s node %r: R has shape %s, expected %s" % (op_type, name, R.shape, (D, G * H, H)))
    if B is not None and B.shape != (D, 2 * G * H):
        raise FormatError("%s node %r: B has shape %s, expected %s" % (op_type, name, B.shape, (D, 2 * G * H)))
    if P is not None and P.shape != (D, 3 * H):
        raise FormatError("LSTM node %r: P has shape %s, expected %s" % (name, P.shape, (D, 3 * H)))
    activation, recurrent = _activations(op_type, attrs, D, where)
    dtype = np.float64 if W.dtype == np.float64 else np.float32
    if W.dtype not in (np.float32, np.float64):
        raise UnsupportedLayerError(op_type, "W", "node %r: weights of type %s" % (name, W.dtype))
    # GRU z, r, h and RNN: the canonical order. LSTM: ONNX i, o, f, c -> canonical i, f,
    # c, o, reordered by the layer as it copies the weights into its layout: the weights
    # are passed as views of the file's bytes, copied once
    order = (0, 2, 3, 1) if op_type == "LSTM" else None
    weights = []
    for d in range(D):
        b = B[d] if B is not None else None
        weights.append(
            CellWeights(
                W[d].T,
                R[d].T,
                None if b is None else b[: G * H],
                None if b is None else b[G * H :],
                # ONNX P rows i, o, f -> canonical rows i, f, o
                peephole=None if P is None else P[d].reshape(3, H)[[0, 2, 1]],
                gate_order=order,
            )
        )
    reset_after = True
    if op_type == "GRU":
        if attrs["linear_before_reset"] not in (0, 1):
            raise FormatError("GRU node %r: linear_before_reset=%r" % (name, attrs["linear_before_reset"]))
        reset_after = bool(attrs["linear_before_reset"])
    try:
        layer = RNNLayer(
            cell,
            weights,
            reset_after=reset_after,
            activation=activation,
            recurrent_activation=recurrent or "sigmoid",
            go_backwards=direction == "reverse",
            dtype=dtype,
            clip=clip,
            input_forget=bool(input_forget),
        )
    except ValueError as e:
        raise FormatError("%s node %r: %s" % (op_type, name, e)) from None
    if layer.input_size != I:
        raise FormatError("%s node %r: input size mismatch" % (op_type, name))
    outs = [bool(o) and o in ctx.needed for o in node.outputs]
    if op_type != "LSTM":
        outs = outs[:2]
    while len(outs) < (3 if op_type == "LSTM" else 2):
        outs.append(False)
    in_slots = [s[0], s[4], s[5], s[6] if op_type == "LSTM" else None]
    return RecurrentOp(op_type, name, in_slots, layer, layout=layout, outputs=outs)


# -- the exporters' zero initial state ----------------------------------------------------

_INT, _INTS = 2, 7  # AttributeProto.INT, INTS


def drop_zero_states(nodes, protos, const, taken, outputs):
    """The zero initial states of the recurrent nodes, known at load: where a node's
    ``initial_h`` / ``initial_c`` is computed the way ``torch.onnx.export`` writes a zero
    state::

        Expand(Z, Concat([D], Unsqueeze(Gather(Shape(X), 1), [0]), [H]))

    (``X`` the node's own input, ``D`` its directions, ``H`` its units, layout 0: the state
    (D, batch, H); ``Z`` a constant of +0.0 that broadcasts to it), the state is marked
    absent (``Z`` of batch 1: zeros of X's batch, as ONNX takes an absent state) or, where
    ``Z`` holds a batch of ``b`` > 1 (torch's trace of ``zeros(D, b, H)``: the model then
    runs batches of ``b`` only), given as the constant ``zeros(D, b, H)`` (named after the
    chain's tensor). The node computes the same; the chain's nodes are then needed by
    nothing else and are neither converted nor run at load: about 9 nodes per
    recurrent node, a fifth of a small model's load. Anything else -- another dtype, a
    value not exactly +0.0, other axes or attributes, a tensor of the chain computed
    twice, after the node, or named as a graph input or initializer (``taken``), a
    constant state another node or the graph's ``outputs`` read -- is left as it is.

    ``nodes``: the graph's ``_Node`` s (their ``inputs`` are changed), ``protos`` their
    NodeProtos; ``const(name)``: the value of an initializer or of a ``Constant`` node's
    output, or None. Returns ``{name: zeros}``: the constant states."""
    producer: dict = {}
    readers: dict = {}
    count = 0
    for k, node in enumerate(nodes):
        for o in node.outputs:
            if o:
                producer[o] = k
                count += 1
        for i in node.inputs:
            readers[i] = readers.get(i, 0) + 1
    made: dict = {}
    if len(producer) != count:
        return made  # a tensor computed twice: refused later, as it is
    for k, node in enumerate(nodes):
        if node.op_type not in _CELLS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 6:
            continue
        attrs = {a.name: a for a in protos[k].attribute}
        if "layout" in attrs and (attrs["layout"].type != _INT or attrs["layout"].i != 0):
            continue
        w = const(node.inputs[1])
        if w is None or w.ndim != 3 or w.dtype not in (np.float32, np.float64):
            continue
        D, H = w.shape[0], w.shape[1] // _CELLS[node.op_type][1]
        for j in (5, 6) if node.op_type == "LSTM" else (5,):
            name = node.inputs[j] if j < node.num_explicit else ""
            if not name:
                continue
            match = _ZeroState(nodes, protos, producer, const)
            shape = match.state_shape(name, node.inputs[0], D, H, w.dtype)
            if shape is None or max(match.used) >= k or any(o in taken for i in match.used for o in nodes[i].outputs):
                continue
            if shape[1] == 1:
                node.inputs[j] = ""
            elif readers[name] == 1 and name not in outputs:
                fresh = name + " (zeros)"
                while fresh in producer or fresh in readers or fresh in taken or fresh in made:
                    fresh += "'"
                z = np.zeros(shape, w.dtype)
                z.flags.writeable = False
                made[fresh] = z
                node.inputs[j] = fresh
    return made


class _ZeroState:
    """One chain of :func:`drop_zero_states`: :meth:`state_shape`, and in ``used`` the nodes it
    read (the chain's ops and the ``Constant`` nodes of its constants)."""

    def __init__(self, nodes, protos, producer, const):
        self.nodes, self.protos, self.producer, self.const = nodes, protos, producer, const
        self.used: list = []

    def node(self, name, op_type, n_in, allowed=()):
        """The node computing ``name`` if it is ``op_type`` with ``n_in`` inputs and
        attributes among ``allowed``, and its attributes: ``(node, attrs)`` or ``(None, None)``."""
        k = self.producer.get(name)
        if k is None:
            return None, None
        n = self.nodes[k]
        if n.op_type != op_type or n.domain not in ("", "ai.onnx") or n.num_explicit != n_in or len(n.outputs) != 1:
            return None, None
        attrs = {a.name: a for a in self.protos[k].attribute}
        if any(a not in allowed for a in attrs):
            return None, None
        self.used.append(k)
        return n, attrs

    def value(self, name):
        if name in self.producer:
            self.used.append(self.producer[name])
        return self.const(name)

    def ints(self, name, ndim, want):
        v = self.value(name)
        return isinstance(v, np.ndarray) and v.dtype.kind == "i" and v.ndim == ndim and v.reshape(-1).tolist() == want

    def state_shape(self, name, x, D, H, dtype):
        """The state's shape, ``(D, b, H)`` (``b`` = 1 where ``Z`` holds no batch), if
        ``name`` is computed as :func:`drop_zero_states` describes, else None."""
        e, _ = self.node(name, "Expand", 2)
        if e is None:
            return None
        z = self.value(e.inputs[0])
        if not (isinstance(z, np.ndarray) and z.dtype == dtype and z.ndim <= 3):
            return None
        zs = (1,) * (3 - z.ndim) + z.shape
        if zs[0] not in (1, D) or zs[2] not in (1, H) or z.tobytes() != bytes(z.nbytes):
            return None  # (not exactly +0.0 everywhere: every bit zero)
        c, attrs = self.node(e.inputs[1], "Concat", 3, ("axis",))
        if c is None or "axis" not in attrs or attrs["axis"].type != _INT or attrs["axis"].i != 0:
            return None
        if not (self.ints(c.inputs[0], 1, [D]) and self.ints(c.inputs[2], 1, [H])):
            return None
        u, attrs = self.node(c.inputs[1], "Unsqueeze", 2)
        if u is not None:
            if not self.ints(u.inputs[1], 1, [0]):
                return None
        else:  # (opset 11: the axes an attribute)
            u, attrs = self.node(c.inputs[1], "Unsqueeze", 1, ("axes",))
            if u is None or "axes" not in attrs or attrs["axes"].type != _INTS or list(attrs["axes"].ints) != [0]:
                return None
        g, attrs = self.node(u.inputs[0], "Gather", 2, ("axis",))
        if g is None or ("axis" in attrs and (attrs["axis"].type != _INT or attrs["axis"].i != 0)):
            return None
        if not self.ints(g.inputs[1], 0, [1]):
            return None
        s, _ = self.node(g.inputs[0], "Shape", 1)
        if s is None or s.inputs[0] != x:
            return None
        return (D, zs[1], H)
