"""Export a model for other runtimes: TorchScript (always) and ONNX (when torch can write it).

Both files take float32 inputs ``[N, C, H, W]`` in [0, 1] (the version's input shape) and
return logits ``[N, K]``, with a dynamic batch dimension. The file appears atomically (written
beside the target, renamed).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

FORMATS = ("torchscript", "onnx")


class ExportError(Exception):
    """The model could not be exported in the requested format; the message says why."""


def export_model(
    model: nn.Module,
    path: Path | str,
    fmt: str = "torchscript",
    input_shape: tuple[int, int, int] = (1, 28, 28),
) -> Path:
    """Write ``model``, which takes images of ``input_shape`` (C, H, W), to ``path`` in format
    ``fmt`` (``torchscript`` or ``onnx``).

    Raises:
        ExportError: unknown format, missing folder, or the exporter failed.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if not path.parent.is_dir():
        raise ExportError(f"folder {path.parent} does not exist; create it first")
    model = model.eval()
    example = torch.zeros(2, *input_shape)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if fmt == "torchscript":
                torch.jit.trace(model, example).save(str(tmp))
            else:
                _export_onnx(model, example, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _export_onnx(model: nn.Module, example: torch.Tensor, target: Path) -> None:
    try:
        torch.onnx.export(
            model,
            (example,),
            str(target),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    except (ImportError, torch.onnx.OnnxExporterError) as exc:
        raise ExportError(
            f"ONNX export failed: {exc} (it needs the `onnx` package: "
            "`pip install 'robustloop[export]'`), or use --format torchscript"
        ) from None
