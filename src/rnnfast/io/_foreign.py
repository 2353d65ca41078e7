"""Name the model files rnnfast does not read as what they are, with the way to a file it
reads: every refusal of such a file says "a TorchScript archive", "a TensorFlow
SavedModel", "a torch.export program" or "a whole pickled module" rather than "not a
model file".

Only names and advice live here; detecting the formats rnnfast reads (ONNX among them)
is ``_sniff``'s job. The checks look at a few leading bytes, a zip archive's member names or a
directory's entries: nothing is parsed or run.
"""

import os
import zipfile

from ._zip import ZIP_ERRORS

__all__ = ["ONNX_ROUTE", "STATE_DICT_ROUTE", "WHOLE_MODULE_ROUTES", "name_foreign"]

#: The way from a PyTorch model to a weights file rnnfast reads.
STATE_DICT_ROUTE = "save the weights, torch.save(model.state_dict(), path), and load that file"
#: The way from a whole PyTorch model to a file rnnfast reads whole.
ONNX_ROUTE = (
    'export the whole model once, torch.onnx.export(model, example_inputs, "model.onnx"), and '
    'rnnfast.load("model.onnx") (or rnnfast.from_torch(model, example_inputs) where torch is at hand)'
)
#: Both, as every refusal of a whole PyTorch model gives them.
WHOLE_MODULE_ROUTES = "two ways out: (1) %s; (2) %s" % (STATE_DICT_ROUTE, ONNX_ROUTE)

_TF_ROUTE = (
    "rnnfast reads Keras models (model.save('model.keras') or an .h5 file) and ONNX; convert a "
    "SavedModel with tf2onnx (python -m tf2onnx.convert --saved-model DIR --output model.onnx)"
)


def _looks_like_saved_model(head):
    # SavedModel: saved_model_schema_version = 1 (field 1), then meta_graphs (field 2)
    return head[:3] == b"\x08\x01\x12"


def name_foreign(path, head=None):
    """What the file or directory at ``path`` is, in words with the way to a file
    rnnfast reads, when it is a model format rnnfast does not read; else None.

    Parameters
    ----------
    path : str
    head : bytes, optional
        The file's first bytes (read here if not given).
    """
    if os.path.isdir(path):
        entries = set(os.listdir(path))
        if "saved_model.pb" in entries or "saved_model.pbtxt" in entries:
            return "a TensorFlow SavedModel directory: " + _TF_ROUTE
        return None
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            return None
    if _looks_like_saved_model(head):
        return "a TensorFlow SavedModel (saved_model.pb): " + _TF_ROUTE
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except ZIP_ERRORS:
            return None
        tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n}
        if any(t + "constants.pkl" in names or any(n.startswith(t + "code/") for n in names) for t in tops):
            return "a TorchScript archive (torch.jit.save), which holds code: " + WHOLE_MODULE_ROUTES
        if any(t + "archive_format" in names or t + "models/model.json" in names for t in tops):
            return "a torch.export program (torch.export.save, .pt2): " + WHOLE_MODULE_ROUTES
    return None
