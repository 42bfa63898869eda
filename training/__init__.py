"""The PyTorch core of robustloop: data, models, attacks, (adversarial) training, evaluation
and the model store. Serving and the workflow steps use these public names only.
"""

from training.adversarial import (
    DEFAULT_LR,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    TrainingDiverged,
    adversarial_train,
    learning_rate_warning,
    use_bf16,
)
from training.attacks import ATTACKS, FGSM, PGD, Attack, make_attack
from training.data import DatasetError, FashionMNIST, Splits, load_fashion_mnist, make_splits
from training.device import DEVICES, DeviceError, model_device, resolve_device, use_threads
from training.evaluate import EvalResult, evaluate
from training.harden import Hardened, harden
from training.models import ARCHITECTURES, average_weights, build_model
from training.store import (
    Manifest,
    ModelStore,
    StoreError,
    TamperedModelError,
    UnknownVersionError,
)
from training.train import TrainResult, train_standard
from training.versions import average_versions, train_baseline

__all__ = [
    "ARCHITECTURES",
    "ATTACKS",
    "DEFAULT_LR",
    "DEVICES",
    "FGSM",
    "METHODS",
    "OPTIMIZERS",
    "PGD",
    "PRECISIONS",
    "Attack",
    "DatasetError",
    "DeviceError",
    "EvalResult",
    "FashionMNIST",
    "Hardened",
    "Manifest",
    "ModelStore",
    "Splits",
    "StoreError",
    "TamperedModelError",
    "TrainResult",
    "TrainingDiverged",
    "UnknownVersionError",
    "adversarial_train",
    "average_versions",
    "average_weights",
    "build_model",
    "evaluate",
    "harden",
    "learning_rate_warning",
    "load_fashion_mnist",
    "make_attack",
    "make_splits",
    "model_device",
    "resolve_device",
    "train_baseline",
    "train_standard",
    "use_bf16",
    "use_threads",
]
