"""The modern recipes (recipes/imagenet-tv2.yaml, recipes/cifar-modern.yaml) load with their
sources' values and train two steps on tiny data, with a small model in place of theirs."""

from __future__ import annotations

from pathlib import Path

import yaml
from dataset_files import write_image_tree
from tiny_run import train_tiny_run, train_tiny_synthetic

from reslab.config import load_config

THREADS = "train.threads=2"  # the tiny run (resnet_cifar_8, 2 steps, batch 8) in place of the recipes' sizes


def test_imagenet_tv2_recipe_holds_torchvisions_values() -> None:
    cfg = load_config("imagenet-tv2")
    d, o, s, t = cfg.data, cfg.optim, cfg.schedule, cfg.train
    assert (cfg.model.name, t.epochs, t.batch_size, t.precision) == ("resnet50", 600, 1024, "auto")
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.no_decay_bn_bias) == ("sgd", 0.5, 0.9, 2e-5, True)
    assert (o.label_smoothing, o.ema_every) == (0.1, 32)
    assert abs(o.ema_decay - (1 - (1 - 0.99998) * 8 * 128 * 32 / 600)) < 1e-6  # torchvision's adjusted decay
    assert (s.name, s.final_lr, s.warmup_epochs, s.warmup_lr) == ("cosine", 0.0, 5, 0.5 * 0.01)
    assert (d.policy, d.random_erasing, d.mixup_alpha, d.cutmix_alpha, d.repeats) == (
        "trivialaugment",
        0.1,
        0.2,
        1.0,
        4,
    )
    assert (d.image_size, d.eval_image_size, d.eval_resize_size, d.augment) == (176, 224, 232, "rrc")
    assert (d.dataset, d.in_memory) == ("imagefolder", False)


def test_imagenet_tv2_recipe_trains_two_steps(tmp_path: Path, capsys) -> None:
    write_image_tree(tmp_path / "tree", size=(40, 36), per_class=8, classes=("a", "b"))
    run = tmp_path / "run"
    small = ("data.image_size=32", "data.eval_image_size=32", "data.eval_resize_size=36", "data.workers=0")
    recipe = ("--recipe", "imagenet-tv2")  # its dataset (imagefolder) too
    train_tiny_run(run, tmp_path / "tree", THREADS, *small, "train.precision=fp32", data=None, extra=recipe)
    err = capsys.readouterr().err
    assert "EMA 0.998908 every 32 steps" in err and "(5 epochs) from 0.005" in err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["policy"] == "trivialaugment" and saved["data"]["repeats"] == 4
    assert (run / "weights.safetensors").is_file()


def test_cifar_modern_recipe_holds_trivialaugments_values() -> None:
    cfg = load_config("cifar-modern")
    d, o, s, t = cfg.data, cfg.optim, cfg.schedule, cfg.train
    assert (cfg.model.name, t.epochs, t.batch_size) == ("wrn28_10", 200, 128)
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay, o.grad_clip) == ("sgd", 0.1, 0.9, True, 5e-4, 5.0)
    assert (s.name, s.final_lr, s.warmup_steps, s.warmup_epochs) == ("cosine", 0.0, 0, 0)
    assert (d.dataset, d.split, d.normalize, d.augment, d.pad, d.policy) == (
        "cifar10", "full", "channel", "crop-flip", 4, "trivialaugment",
    )  # fmt: skip


def test_cifar_modern_recipe_trains_two_steps(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train_tiny_synthetic(run, THREADS, extra=("--recipe", "cifar-modern"))  # data.split=full, as the recipe has it
    err = capsys.readouterr().err
    assert "(Nesterov)" in err and "gradient clip 5" in err
    assert (run / "weights.safetensors").is_file()
