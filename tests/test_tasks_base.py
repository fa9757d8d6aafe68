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


def _schedule(task: VitkitTask, steps_per_epoch: int = 10, epochs: int = 4) -> list[float]:
    """The lr multiplier the task's own configure_optimizers gives at each optimiser step of a fake run."""
    trainer = SimpleNamespace(estimated_stepping_batches=steps_per_epoch * epochs, train_dataloader=[0],
                              num_training_batches=steps_per_epoch, accumulate_grad_batches=1, max_epochs=epochs)
    task._trainer = trainer
    scheduler = task.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert len({f(7) for f in scheduler.lr_lambdas}) == 1, "every parameter group follows one schedule"
    return [scheduler.lr_lambdas[0](s) for s in range(steps_per_epoch * epochs)]


TINY = {
    ImageClassifier: lambda **kw: ImageClassifier("vit_tiny_patch4_32", num_classes=3, img_size=16,
                                                  model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2}, **kw),
    SemanticSegmenter: lambda **kw: SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=3, img_size=16,
                                                      **kw),
    ObjectDetector: lambda **kw: ObjectDetector("detr_vit_nano_patch8_64", num_classes=3, img_size=32, **kw),
}


@pytest.mark.parametrize("task", list(TINY))
def test_every_image_task_warms_up_over_warmup_epochs_or_warmup_steps_then_decays(task):
    by_epochs = _schedule(TINY[task](lr=1e-3, warmup_epochs=1, min_lr_ratio=0.1))
    assert by_epochs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # one epoch of 10 steps
    assert by_epochs[10] == pytest.approx(1.0) and by_epochs[-1] == pytest.approx(0.1, abs=0.01)
    by_steps = _schedule(TINY[task](lr=1e-3, warmup_epochs=1, warmup_steps=4, min_lr_ratio=0.1))
    assert by_steps[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]), "warmup_steps, when set, wins"


def test_every_task_trains_through_the_shared_optimiser_and_step_loop():
    """The plug-in surface: a task writes its loss and evaluation; the loop, optimiser, schedule and prediction
    files are the base's (a task may override param_groups/build_optimizer/lr_lambda, not configure_optimizers)."""
    for task in (ImageClassifier, SemanticSegmenter, ObjectDetector, Seq2Seq, ImageCaptioner, VisualQA):
        for hook in ("configure_optimizers", "training_step", "validation_step", "test_step",
                     "on_predict_epoch_end", "on_predict_batch_end"):
            assert getattr(task, hook) is getattr(VitkitTask, hook), f"{task.__name__}.{hook} is its own"
        assert task.loss is not VitkitTask.loss and task._evaluate is not VitkitTask._evaluate


def test_predictions_are_written_as_json_and_flat_rows_also_as_csv(tmp_path):
    task = _attached(tmp_path, world_size=1, rank=0)
    rows = [{"image": "a.png", "answer": "red", "prob": 0.9}, {"image": "b.png", "answer": "two", "prob": 0.5}]
    task.on_predict_epoch_start()
    task.on_predict_batch_end(rows[:1], None, 0)
    task.on_predict_batch_end(rows[1:], None, 1)
    task.on_predict_epoch_end()
    import csv
    import json

    assert json.loads((tmp_path / "run" / "predictions.json").read_text()) == rows
    with open(tmp_path / "run" / "predictions.csv") as f:
        assert [r["answer"] for r in csv.DictReader(f)] == ["red", "two"]
    nested = _attached(tmp_path / "nested", world_size=1, rank=0)
    nested.write_predictions([{"path": "a.png", "boxes": [[0, 0, 1, 1]]}])
    assert not (tmp_path / "nested" / "run" / "predictions.csv").exists()
