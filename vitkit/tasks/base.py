"""What every vitkit task does the same way, written once: the run folder and per-process output files, the
checkpoint monitor, the settings kept out of checkpoints, and `torch.compile` in place."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
from torch import nn

from ..errors import ConfigError


class VitkitTask(pl.LightningModule):
    """A LightningModule with vitkit's shared plumbing; a task adds only its model, loss, metrics and pictures.

    Class attributes a task sets:
        monitor: the logged metric that picks the best checkpoint (the CLI's ModelCheckpoint reads it; a task
            may also set it per instance, e.g. from a `monitor_metric` argument).
        monitor_mode: "max" or "min" for `monitor`.
        runtime_hparams: constructor arguments kept out of the checkpoint's hyper-parameters, so that `test` /
            `predict --ckpt_path` take them from their own command line (decoding, thresholds, drawings).
    """

    monitor: ClassVar[str] = "val/loss"
    monitor_mode: ClassVar[Literal["min", "max"]] = "min"
    runtime_hparams: ClassVar[tuple[str, ...]] = ()

    def explainers(self) -> dict[str, Callable[..., list[dict]]]:
        """What `vitkit explain` can do with this task: method name -> `run(task, checkpoint, inputs, args, out)`
        returning one index row per image; the first method is the default. None by default."""
        return {}

    def run_dir(self) -> Path:
        """The run folder (`runs/<config>/version_N`), created if needed; the same on every process."""
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def output_path(self, name: str) -> Path:
        """`<run>/<name>`, with `.rank<N>` before the extension when several processes each write their share
        (`predictions.json` -> `predictions.rank1.json`; a name without extension gets it at the end)."""
        if self.trainer.world_size > 1:
            stem, dot, ext = name.partition(".")
            name = f"{stem}.rank{self.global_rank}{dot}{ext}"
        return self.run_dir() / name

    @staticmethod
    def build_model(build: Callable[..., nn.Module], what: str, *args: Any, field: str = "model.init_args",
                    **kwargs: Any) -> nn.Module:
        """`build(*args, **kwargs)`, a model's own ValueError/TypeError (an unknown keyword, a size the patch does not
        divide ...) becoming one ConfigError that names the config field, `what` was built and with which keywords."""
        try:
            return build(*args, **kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{field}: cannot build {what} with {kwargs}: {err}") from err

    @staticmethod
    def maybe_compile(enabled: bool, backend: str, *modules: nn.Module | None) -> None:
        """`torch.compile` each module in place when `enabled` (`nn.Module.compile`: state-dict keys get no
        `_orig_mod.` prefix, so checkpoints load compiled or not)."""
        if enabled:
            for module in modules:
                if module is not None:
                    module.compile(backend=backend)
