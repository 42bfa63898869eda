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
from training.data import (
    DatasetError,
    FashionMNIST,
    ImageData,
    Splits,
    check_fits,
    load_fashion_mnist,
    load_images,
    make_splits,
)
from training.device import DEVICES, DeviceError, model_device, resolve_device, use_threads
from training.evaluate import EvalResult, evaluate
from training.harden import Hardened, harden
from training.models import (
    ARCHITECTURES,
    FASHION_CLASSES,
    ModelSpec,
    ModelSpecError,
    average_weights,
    build_model,
    load_weights,
    unwrap,
)
from training.store import (
    Manifest,
    ModelStore,
    StoreConflict,
    StoreError,
    TamperedModelError,
    UnknownVersionError,
)
from training.train import TrainResult, train_standard
from training.versions import average_versions, import_weights, model_spec, train_baseline

__all__ = [
    "ARCHITECTURES",
    "ATTACKS",
    "DEFAULT_LR",
    "DEVICES",
    "FASHION_CLASSES",
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
    "ImageData",
    "Manifest",
    "ModelSpec",
    "ModelSpecError",
    "ModelStore",
    "Splits",
    "StoreConflict",
    "StoreError",
    "TamperedModelError",
    "TrainResult",
    "TrainingDiverged",
    "UnknownVersionError",
    "adversarial_train",
    "average_versions",
    "average_weights",
    "build_model",
    "check_fits",
    "evaluate",
    "harden",
    "import_weights",
    "learning_rate_warning",
    "load_fashion_mnist",
    "load_images",
    "load_weights",
    "make_attack",
    "make_splits",
    "model_device",
    "model_spec",
    "resolve_device",
    "train_baseline",
    "train_standard",
    "unwrap",
    "use_bf16",
    "use_threads",
]
