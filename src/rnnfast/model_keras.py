"""KerasModel: a loaded Keras model (filled in by the Keras loader work)."""


class KerasModel:
    pass
