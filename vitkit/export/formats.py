"""Writing a graph as ONNX (`torch.onnx.export`, dynamo exporter, from a `torch.export` program) or as a
`torch.export` program (.pt2), and turning an exporter failure into one error naming the layer that failed."""
from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from ..errors import ConfigError, VitkitError

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
DYNAMIC_AXES = ("batch", "size")


class ExportError(VitkitError, RuntimeError):
    """A model that the exporter cannot trace, or an exported file whose outputs differ from the model's."""


def dynamic_shapes(dynamic: set[str], patch: tuple[int, int]) -> dict | None:
    """`torch.export` dynamic shapes of the `pixels` input: a batch axis, and H, W as multiples of the patch."""
    if not dynamic:
        return None
    axes: dict[int, object] = {}
    if "batch" in dynamic:
        axes[0] = Dim("batch", min=1, max=4096)
    if "size" in dynamic:  # sides stay multiples of the patch: the guards PatchEmbed checks
        axes[2] = patch[0] * Dim("patches_h", min=1, max=1024)
        axes[3] = patch[1] * Dim("patches_w", min=1, max=1024)
    return {"pixels": axes}


def trace(graph: nn.Module, args: tuple[torch.Tensor, ...], shapes: dict | None = None):
    """`torch.export.export` of `graph(*args)` with `shapes` (per forward argument, as `dynamic_shapes`); a failure
    becomes one ExportError naming the module it came from."""
    try:
        with torch.no_grad():
            return torch.export.export(graph, tuple(args), dynamic_shapes=shapes, strict=False)
    except Exception as err:  # the exporter raises many types (user errors, guards, unsupported ops)
        raise ExportError(f"cannot export {type(graph).__name__}: {failing_module(err, graph)} "
                          f"raised {type(err).__name__}: {_first_line(err)}") from err


def write(program, path: Path, fmt: str, input_names: list[str], output_names: list[str], opset: int | None) -> None:
    """Write a traced program as ONNX or .pt2."""
    if fmt == "exported-program":
        torch.export.save(program, str(path))
        return
    try:
        onnx = torch.onnx.export(program, dynamo=True, input_names=input_names, output_names=output_names,
                                 opset_version=opset, optimize=True, verbose=False)
        onnx.save(str(path))
    except Exception as err:
        raise ExportError(f"cannot convert to ONNX (opset {opset}): {_first_line(err)}") from err


def failing_module(err: BaseException, graph: nn.Module) -> str:
    """The innermost submodule of `graph` whose forward was running when `err` was raised, as
    "module 'net.blocks.0.attn' (Attention)"; "the model" when no frame belongs to one."""
    names = {id(m): n for n, m in graph.named_modules()}
    found = None
    seen = set()
    while err is not None and id(err) not in seen:  # the error and what it was raised from
        seen.add(id(err))
        for frame, _ in traceback.walk_tb(err.__traceback__):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names and names[id(owner)]:
                found = owner
        err = err.__cause__ or err.__context__
    if found is None:
        return "the model"
    return f"module {names[id(found)]!r} ({type(found).__name__})"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: unknown; expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
