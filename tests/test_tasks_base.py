"""The plumbing every task shares (`vitkit.tasks.base.VitkitTask`): run folder, per-process files, compile."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vitkit.tasks import ImageCaptioner, ImageClassifier, ObjectDetector, SemanticSegmenter, Seq2Seq, VisualQA
from vitkit.tasks.base import VitkitTask


def _attached(tmp_path, world_size: int, rank: int) -> VitkitTask:
    task = VitkitTask()
    task._trainer = SimpleNamespace(world_size=world_size, global_rank=rank, log_dir=str(tmp_path / "run"),
                                    default_root_dir=str(tmp_path))
    return task


def test_output_path_is_in_the_run_folder_with_the_rank_only_under_several_processes(tmp_path):
    one = _attached(tmp_path, world_size=1, rank=0)
    assert one.output_path("predictions.json") == tmp_path / "run" / "predictions.json"
    assert (tmp_path / "run").is_dir()  # created on first use
    two = _attached(tmp_path, world_size=2, rank=1)
    assert two.output_path("predictions.json").name == "predictions.rank1.json"
    assert two.output_path("predictions").name == "predictions.rank1"


def test_maybe_compile_compiles_in_place_and_keeps_state_dict_keys():
    module = torch.nn.Linear(3, 2)
    keys = list(module.state_dict())
    VitkitTask.maybe_compile(False, "eager", module)
    assert module._compiled_call_impl is None
    VitkitTask.maybe_compile(True, "eager", module, None)
    assert module._compiled_call_impl is not None and list(module.state_dict()) == keys


@pytest.mark.parametrize("task", [ImageClassifier, SemanticSegmenter, ObjectDetector, Seq2Seq, ImageCaptioner,
                                  VisualQA])
def test_every_task_is_a_vitkit_task_with_a_monitor(task):
    assert issubclass(task, VitkitTask)
    assert task.monitor_mode in ("min", "max") and isinstance(task.runtime_hparams, tuple)


def test_a_model_that_cannot_be_built_is_one_config_error_naming_the_field_and_the_keywords():
    from vitkit.errors import ConfigError

    with pytest.raises(ConfigError,
                       match=r"model.init_args: cannot build 'vit_tiny_patch4_32' with .*'not_an_option': 1"):
        ImageClassifier("vit_tiny_patch4_32", model_kwargs={"not_an_option": 1})
    with pytest.raises(ConfigError,
                       match=r"model.init_args: cannot build 'segmenter_vit_nano_patch8_64' with .*img_size"):
        SemanticSegmenter("segmenter_vit_nano_patch8_64", img_size=60)  # 8x8 patches do not divide 60


def test_vitkit_explain_finds_each_tasks_methods_through_its_explainers_hook():
    expected = {ImageClassifier: ["rollout", "attention", "grad"], SemanticSegmenter: ["rollout"],
                ObjectDetector: ["cross"], ImageCaptioner: ["cross"], Seq2Seq: [], VisualQA: []}
    for task, methods in expected.items():
        offered = task.explainers(task.__new__(task))  # the hook reads nothing from the instance
        assert list(offered) == methods and all(callable(run) for run in offered.values())


ALL_TASKS = [ImageClassifier, SemanticSegmenter, ObjectDetector, Seq2Seq, ImageCaptioner, VisualQA]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_takes_compile(task):
    import inspect

    params = inspect.signature(task).parameters
    assert params["compile"].default is False and params["compile_backend"].default == "inductor"


def test_a_compiled_segmenter_gives_the_same_logits():
    plain = SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32)
    compiled = SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32, compile=True,
                                 compile_backend="eager")
    compiled.load_state_dict(plain.state_dict())  # the same keys: compile is in place
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval().model(x), plain.eval().model(x))
