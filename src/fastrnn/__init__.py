"""fastrnn: a fast, exact vanilla CharRNN (tanh recurrence, softmax output) for numpy users.

    A_t = X_t U + H_{t-1} W + b,  H_t = tanh(A_t),  O_t = H_t V + c,  Ŷ_t = softmax(O_t)

The same math runs on several backends ('numba', 'c', 'numpy'); the numpy one is
the readable reference every other is tested against. See :func:`backends`.
"""

from ._params import Cell, DeepGrads, DeepParams, Grads, LayerGrads, Params, init_params
from ._threads import get_num_threads, set_num_threads
from .api import loss_and_grads, predict_proba, rnn_backward, rnn_forward
from .backends import backends, get_backend, set_backend, unavailable
from .data import Batcher, Vocab
from .model import CharRNN
from .train import Trainer, TrainingDiverged, TrainingInterrupted
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from . import optim
from .gradcheck import gradcheck

__version__ = "0.1.0"

__all__ = [
    "Params",
    "Grads",
    "LayerGrads",
    "Cell",
    "DeepParams",
    "DeepGrads",
    "init_params",
    "loss_and_grads",
    "predict_proba",
    "rnn_forward",
    "rnn_backward",
    "backends",
    "get_backend",
    "set_backend",
    "unavailable",
    "set_num_threads",
    "get_num_threads",
    "CharRNN",
    "Vocab",
    "Batcher",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "optim",
    "gradcheck",
]
