"""A model object sent once to every worker of a Dask client, as a worker plugin.

Imported by :mod:`rnnfast.dask` only when a ``distributed`` client is current (this
module imports ``distributed``). Why a plugin and not a value in the graph: Dask's
scheduler may run a task on any worker that holds one of its inputs. A model in the
graph (or scattered with ``broadcast=True``) is on every worker after the first blocks,
so every block's task may go to either worker; the scheduler then places it by the
workers' queued work, not by where the block is, and in a 2-worker job of 20 blocks
held 10 / 10 (bench/scale_out.py) 3-4 blocks per job were moved and the work split 11 / 9.
A block's task whose only input is its block runs on the worker that holds it. The tasks
carry a :class:`WorkerModel`: the plugin's name, and the model itself only in the
client's process (it does not pickle).
"""

import uuid
import weakref
from collections import OrderedDict

from distributed import WorkerPlugin, get_worker

from ._scaleout import ModelHandle

#: Models one client keeps on its workers (the oldest is taken off past this).
MAX_MODELS = 4

# client -> OrderedDict(id(model) -> (name, model)): what each client has sent, with a
# reference to the model (its id cannot be reused while it is here); a client's entry (and
# its models) goes with the client
_sent: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ModelPlugin(WorkerPlugin):
    """Holds a model in each worker process (set up once per worker, and in every
    worker that joins the cluster later)."""

    def __init__(self, model):
        self.model = model


class WorkerModel(ModelHandle):
    """A model sent to the workers as :class:`ModelPlugin` ``name``: pickles as the name;
    in the client's own process (Dask's local schedulers) it is the model itself."""

    __slots__ = ("name", "_model")

    def __init__(self, name, model=None):
        self.name = name
        self._model = model

    def __reduce__(self):
        return (WorkerModel, (self.name,))

    def get(self):
        if self._model is not None:
            return self._model
        try:
            plugin = get_worker().plugins.get(self.name)
        except ValueError:  # not in a worker: a graph unpickled elsewhere
            plugin = None
        if not isinstance(plugin, ModelPlugin):
            raise RuntimeError(
                "the model of this graph (%s) is not on this worker: it was sent to the workers of the "
                "client that built the graph, and a client keeps its last %d models there; call "
                "rnnfast.dask.predict again" % (self.name, MAX_MODELS)
            )
        return plugin.model

    def __repr__(self):
        return "WorkerModel(%r)" % self.name


def send(client, model):
    """The model on every worker of ``client`` (sent once per client and model object),
    as a :class:`WorkerModel` for the tasks."""
    sent = _sent.setdefault(client, OrderedDict())
    hit = sent.get(id(model))
    if hit is not None:
        sent.move_to_end(id(model))
        return WorkerModel(hit[0], model)
    name = "rnnfast-model-" + uuid.uuid4().hex  # unique among all the clients of a scheduler
    client.register_plugin(ModelPlugin(model), name=name)
    sent[id(model)] = (name, model)
    while len(sent) > MAX_MODELS:
        old, _ = sent.popitem(last=False)[1]
        client.unregister_worker_plugin(old)
    return WorkerModel(name, model)
