"""TorchRNN: a loaded nn.GRU / nn.LSTM / nn.RNN (filled in by the PyTorch loader work)."""


class TorchRNN:
    pass
