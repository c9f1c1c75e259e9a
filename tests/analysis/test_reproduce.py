"""`reslab reproduce` and `reslab report` end to end on tiny data (issue 6).

Every experiment runs in a tiny configuration (synthetic or tiny CIFAR pickles / ImageFolder trees,
depth-8 nets, a few iterations) and the reports are checked for their tables and figures. The
numbers mean nothing; the reports must say so.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from dataset_files import TINY, write_cifar, write_image_tree

from reslab.analysis.experiment import Settings, available_cores
from reslab.analysis.layer_responses import layer_response_stds, response_norms
from reslab.analysis.plan import check_data, training_plan
from reslab.cli import main
from reslab.data.norm import NormStats
from reslab.errors import ConfigError
from reslab.models import create_model
from reslab.weights import WeightsMeta, save_weights

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def reproduce(*args: object) -> int:
    return main(["reproduce", *map(str, args)])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def degradation(tmp_path_factory) -> Path:
    """plain-8/14 and ResNet-8/14, 3 iterations each on synthetic data, trained once for the module."""
    out = tmp_path_factory.mktemp("reproduce") / "degradation"
    assert reproduce("degradation", *TINY, "--iterations", 3, "--depths", "8,14", "--out", out) == 0
    return out


def test_degradation_report(degradation: Path) -> None:
    html = (degradation / "report.html").read_text()
    assert "SYNTHETIC DATA" in html
    assert 'id="degradation-summary"' in html and 'id="claims"' in html
    assert all(name in html for name in ("plain-8", "plain-14", "ResNet-8", "ResNet-14"))
    assert html.count('src="data:image/png;base64,') == 2  # Fig. 6 and Fig. 1 styles, embedded
    assert "reslab train --recipe cifar-paper" in html and "torchrun" in html and "torch" in html
    for png in ("fig6_plain_vs_resnet.png", "fig1_plain_train_test.png"):
        assert (degradation / png).stat().st_size > 10_000
    # The same page as Markdown for docs/results/: tables as Markdown, figures as links to the PNGs.
    md = (degradation / "report.md").read_text()
    assert "**SYNTHETIC:**" in md and "| plain-8 |" in md and "| ResNet-14 |" in md
    assert "](fig6_plain_vs_resnet.png)" in md and "](fig1_plain_train_test.png)" in md
    assert "<table" not in md and "base64" not in md
    results = read_json(degradation / "results.json")
    assert results["synthetic_data"] is True and results["iterations"] == 3
    assert [row["model"] for row in results["table"]] == ["plain-8", "plain-14", "ResNet-8", "ResNet-14"]
    assert len(results["claims"]) == 4 and all(isinstance(c["reproduced"], bool) for c in results["claims"])
    if not all(c["reproduced"] for c in results["claims"]):  # an honest verdict with reasons
        assert "did NOT reproduce" in html and any("synthetic" in r for r in results["not_reproduced_reasons"])
    for curves in results["curves"].values():
        assert curves["train"]["steps"] == [1, 2, 3] and curves["test"]["steps"] == [1, 2, 3]
    experiment = read_json(degradation / "experiment.json")
    assert experiment["experiment"] == "degradation" and len(experiment["invocations"]) == 1
    for run in (degradation / "runs").iterdir():  # every run has its own report
        files = {p.name for p in run.iterdir()}
        assert {"report.html", "error_curves.png", "results.json", "train_error.json"} <= files
        assert len(list((run / "checkpoints").glob("ckpt-*.pt"))) == 2  # pruned once the curve is written
    config = yaml.safe_load((degradation / "runs" / "plain_cifar_8-seed0" / "config.yaml").read_text())
    assert config["train"]["iterations"] == 3 and config["schedule"]["milestones"] == [2, 2]


def test_half_finished_experiment_resumes(degradation: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "exp"
    shutil.copytree(degradation, out)
    run = out / "runs" / "resnet_cifar_14-seed0"
    newest = sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]  # step 3: resume from step 2
    for path in (
        run / "summary.json",
        run / "weights.safetensors",
        run / "train_error.json",
        newest,
        newest.with_name(newest.name + ".sha256"),
    ):
        path.unlink()
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert reproduce("degradation", "--out", out) == 0  # the settings come from experiment.json
    assert "4 runs: 3 finished (reused), 1 to resume, 0 to train" in capsys.readouterr().err
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert {k: after[k] for k in before} == before and run.name in after  # nothing else retrained
    assert read_json(run / "summary.json")["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [1, 2, 3]
    html = (out / "report.html").read_text()
    assert "resumed from checkpoint" in html and "reused (finished before)" in html
    assert len(read_json(out / "experiment.json")["invocations"]) == 2


def test_parallel_runs_in_subprocesses(tmp_path: Path) -> None:
    out = tmp_path / "parallel"
    assert reproduce("degradation", *TINY, "--iterations", 2, "--depths", 8, "--parallel", 2, "--out", out) == 0
    for name in ("plain_cifar_8-seed0", "resnet_cifar_8-seed0"):
        run = out / "runs" / name
        assert (run / "summary.json").is_file() and (run / "train.log").is_file()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["train"]["threads"] == max(1, available_cores() // 2)
    assert "--parallel 2" in (out / "report.html").read_text()


def test_layer_responses_of_a_degradation_experiment(degradation: Path, tmp_path: Path) -> None:
    out = tmp_path / "responses"
    assert reproduce("layer-responses", "--from", degradation, "--images", 32, "--out", out) == 0
    html = (out / "report.html").read_text()
    assert "SYNTHETIC DATA" in html and 'id="responses"' in html and 'id="claims"' in html
    assert html.count('src="data:image/png;base64,') == 1
    assert (out / "fig7_layer_responses.png").stat().st_size > 10_000
    results = read_json(out / "results.json")
    assert {k: len(v) for k, v in results["responses"].items()} == {
        "plain-8": 7,
        "plain-14": 13,
        "ResNet-8": 7,
        "ResNet-14": 13,
    }  # depth - 1 3x3 layers
    assert all(v > 0 for stds in results["responses"].values() for v in stds)
    assert len(results["claims"]) == 2


def test_layer_response_hooks_read_the_bn_after_each_3x3_conv() -> None:
    model = create_model("resnet_cifar_8").eval()
    norms = response_norms(model)
    assert norms[0] is model.bn1 and norms[1:3] == [model.layer1[0].bn1, model.layer1[0].bn2] and len(norms) == 7
    assert len(response_norms(create_model("resnet50"))) == 16  # 7x7 stem; one 3x3 per bottleneck
    x = torch.randn(6, 3, 32, 32)
    captured = {}

    def keep_copy(module, inputs, output) -> None:  # returns None: the block then adds into `output`
        captured["y"] = output.clone()

    handle = model.layer3[0].bn2.register_forward_hook(keep_copy)
    with torch.no_grad():
        model(x)
    handle.remove()
    expected = captured["y"].transpose(0, 1).flatten(1).std(1).mean().item()  # before the in-place addition
    stds = layer_response_stds(model, [(x[:4], None), (x[4:], None)])  # batching does not matter
    assert stds[-1] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="pre-activation"):
        response_norms(create_model("preact_resnet110"))


def test_table6_on_cifar_pickles(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=16)  # 80 training images, 16 test images
    out = tmp_path / "table6"
    assert (
        reproduce(
            "cifar10-table6",
            "--data-dir",
            tmp_path / "data",
            "--depths",
            "8,20",
            "--seeds",
            2,
            "--iterations",
            2,
            "--set",
            "data.val_size=16",
            "--set",
            "train.batch_size=16",
            "--set",
            "data.image_size=16",
            "--set",
            "train.threads=1",
            "--set",
            "train.progress=false",
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--out",
            out,
        )
        == 0
    )
    html = (out / "report.html").read_text()
    assert 'id="table6"' in html and "SYNTHETIC DATA" not in html
    for paper_number in ("8.75", "7.51", "7.17", "6.97", "6.43", "0.27M", "0.46M", "0.66M", "0.85M", "1.7M"):
        assert f"<td>{paper_number}</td>" in html
    assert "0.27M (269,722)" in html and "not run" in html and "\u00b1" in html
    assert "7.93" not in html  # ResNet-1202 only on request (--depths)
    rows = {row["depth"]: row for row in read_json(out / "results.json")["table"]}
    assert rows[20]["params"] == rows[20]["paper_params_exact"] == 269_722
    assert (
        rows[20]["seeds"] == 2
        and rows[20]["test_error_std"] is not None
        and rows[32]
        == {"depth": 32, "paper_params": "0.46M", "paper_params_exact": 464_154, "paper_error": 7.51, "run": False}
    )
    assert (out / "table6_error_vs_depth.png").is_file() and (out / "table6_test_curves.png").is_file()


def test_imagenet_table_evaluates_weights_with_one_and_ten_crops(tmp_path: Path, capsys) -> None:
    write_image_tree(tmp_path / "tree", size=(40, 36), per_class=2, classes=("cat", "dog"))
    weights = tmp_path / "r18.safetensors"
    meta = WeightsMeta(model="resnet18", num_classes=2, in_chans=3, classes=["cat", "dog"], input_size=32)
    save_weights(
        weights,
        create_model("resnet18", num_classes=2),
        meta,
        NormStats(torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)),
    )
    out = tmp_path / "imagenet"
    args = [
        "imagenet-table",
        "--data-dir",
        tmp_path / "tree",
        "--weights",
        f"ResNet-18={weights}",
        "--workers",
        0,
        "--out",
        out,
    ]
    assert reproduce(*args) == 0
    html = (out / "report.html").read_text()
    assert 'id="imagenet-table"' in html and "<td>27.88</td>" in html and "not comparable" in html
    (row,) = read_json(out / "results.json")["table"]
    assert row["1-crop"]["images"] == row["10-crop"]["images"] == 4 and row["paper"]["top1"] == 27.88
    cached = (out / "evals" / "ResNet-18.json").stat().st_mtime_ns
    capsys.readouterr()
    assert reproduce(*args) == 0  # a rerun reuses the saved evaluation
    assert "evaluating" not in capsys.readouterr().out
    assert (out / "evals" / "ResNet-18.json").stat().st_mtime_ns == cached


def test_report_command_compares_runs(degradation: Path, tmp_path: Path) -> None:
    runs = degradation / "runs"
    page = tmp_path / "cmp" / "page.html"
    assert (
        main(["report", str(runs / "plain_cifar_8-seed0"), str(runs / "resnet_cifar_8-seed0"), "--out", str(page)]) == 0
    )
    html = page.read_text()
    assert 'id="final-metrics"' in html and "plain_cifar_8-seed0" in html and "resnet_cifar_8-seed0" in html
    assert "SYNTHETIC DATA" in html and html.count('src="data:image/png;base64,') == 1
    assert (tmp_path / "cmp" / "page_error_curves.png").is_file()
    assert len(read_json(tmp_path / "cmp" / "page_results.json")["runs"]) == 2
    assert main(["report", str(degradation), "--out", str(tmp_path / "all.html")]) == 0  # all of its runs
    assert len(read_json(tmp_path / "all_results.json")["runs"]) == 4


def test_directory_of_another_experiment_is_refused(degradation: Path, capsys) -> None:
    before = (degradation / "experiment.json").read_text()
    assert reproduce("cifar10-table6", "--data", "synthetic", "--out", degradation) == 2
    err = capsys.readouterr().err.strip()
    assert "belongs to the 'degradation' experiment" in err and "--out" in err and len(err.splitlines()) == 1
    assert reproduce("degradation", "--iterations", 5, "--out", degradation) == 2  # other settings
    assert "iterations=3" in capsys.readouterr().err
    assert (degradation / "experiment.json").read_text() == before


def test_two_schedules_side_by_side(degradation: Path, tmp_path: Path, monkeypatch) -> None:
    """--compare draws a finished experiment's curves (faded, with its lr drops) beside this one's and
    tabulates both; a network the other experiment lacks gets n/a."""
    from reslab.analysis import degradation as module

    docs = tmp_path / "docs"  # as committed: report.md, figures and results.json only
    docs.mkdir()
    theirs = read_json(degradation / "results.json")
    del theirs["curves"]["plain-14"]
    theirs["table"] = [row for row in theirs["table"] if row["model"] != "plain-14"]
    (docs / "results.json").write_text(json.dumps(theirs))
    drawn = {}

    def spy(panels, path, **kwargs):
        drawn[path.name] = (panels, kwargs)
        return real(panels, path, **kwargs)

    real = module.curves_figure
    monkeypatch.setattr(module, "curves_figure", spy)
    out = tmp_path / "longer"
    args = ("degradation", *TINY, "--iterations", 4, "--depths", "8,14", "--set", "train.eval_every=2")
    assert reproduce(*args, "--compare", docs, "--out", out) == 0

    panels, kwargs = drawn["fig_schedules.png"]
    faded = {(s.label, s.kind): (s.steps, s.values) for p in panels for s in p.series if s.faded}
    expected = {(n, k): (c[k]["steps"], c[k]["values"]) for n, c in theirs["curves"].items() for k in ("train", "test")}
    assert faded == expected  # every curve of the other experiment, and only those, drawn faded
    assert kwargs["schedules"].faded_lr_drops == theirs["milestones"] and kwargs["lr_drops"] == [2, 3]
    assert (out / "fig_schedules.png").stat().st_size > 10_000
    results = read_json(out / "results.json")
    other = results["compared_with"]
    assert other["iterations"] == 3 and other["label"] == "3 iterations" and other["source"] == str(docs)
    ours = {row["model"]: row for row in results["table"]}
    md = (out / "report.md").read_text()
    assert "## Two schedules" in md and "](fig_schedules.png)" in md
    assert "| model | training error % (3 iterations) | training error % (4 iterations) |" in md
    assert "--set only there: none, only here: 'train.eval_every=2'." in md  # settings that differ are named
    for row in theirs["table"]:
        name = row["model"]
        cells = [name, row["train_error_mean"], ours[name]["train_error_mean"], row["test_error_mean"]]
        line = (
            "| "
            + " | ".join([name] + [f"{100 * v:.2f}" for v in cells[1:]])
            + f" | {100 * ours[name]['test_error_mean']:.2f} |"
        )
        assert line in md, line
    assert f"| plain-14 | n/a | {100 * ours['plain-14']['train_error_mean']:.2f} | n/a |" in md
    assert "--compare" in read_json(out / "experiment.json")["invocations"][0]["command"]

    # --compare belongs to one invocation: a rerun without it (the folder gone) reuses the runs and
    # writes the report without the comparison; comparing with itself is refused.
    shutil.rmtree(docs)
    assert reproduce("degradation", "--out", out) == 0
    assert (
        "compared_with" not in read_json(out / "results.json")
        and "Two schedules" not in (out / "report.md").read_text()
    )
    assert reproduce("degradation", "--compare", out, "--out", out) == 2


def _stats(train: dict, test: dict) -> dict:
    return {key: {"train_error_mean": train[key], "test_error_mean": test[key]} for key in train}


def test_claims_follow_the_numbers() -> None:
    """Each claim's verdict follows the direction of the numbers, the test-error one included."""
    from reslab.analysis.degradation import _claims

    keys = [(False, 20), (False, 56), (True, 20), (True, 56)]
    paper_like = _claims(
        _stats(dict(zip(keys, [0.10, 0.20, 0.09, 0.05])), dict(zip(keys, [0.11, 0.21, 0.10, 0.07]))), [20, 56]
    )
    assert [c["reproduced"] for c in paper_like] == [True, True, True, True]
    assert "test error ResNet-56 7.00% vs ResNet-20 10.00%" in paper_like[2]["detail"]
    deep_resnet_tests_worse = _claims(
        _stats(dict(zip(keys, [0.10, 0.20, 0.09, 0.05])), dict(zip(keys, [0.11, 0.21, 0.06, 0.07]))), [20, 56]
    )
    assert [c["reproduced"] for c in deep_resnet_tests_worse] == [True, True, False, True]
    big = [(False, 110), (False, 1202), (True, 110), (True, 1202)]
    table6_1202 = _claims(
        _stats(dict(zip(big, [0.1, 0.2, 0.01, 0.005])), dict(zip(big, [0.1, 0.2, 0.064, 0.079]))), [110, 1202]
    )
    assert not any("test error than shallower" in c["claim"] for c in table6_1202)  # the paper does not claim it


GOOD = '"experiment": "degradation", "data": "synthetic", "iterations": 9, "milestones": [4]'
CURVES = '"curves": {"plain-8": {"train": {"steps": [1], "values": [0.5]}, "test": {"steps": [1], "values": [0.5]}}}'


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no results.json there"),
        ("{not json", "is not valid JSON"),
        ('{"iterations": ' + "9" * 5000 + "}", "is not valid JSON"),  # over Python's int-digit limit
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),  # deeper than the parser's recursion
        ('{"experiment": "layer-responses"}', "experiment is 'layer-responses', not 'degradation'"),
        ('{"experiment": "degradation", "data": "cifar10"}', "ran on 'cifar10', this one on 'synthetic'"),
        ('{"experiment": "degradation", "data": "synthetic", "iterations": -3}', "iterations is not an integer"),
        ('{"experiment": "degradation", "data": "synthetic", "iterations": 1e400}', "iterations is not an integer"),
        ('{"experiment": "degradation", "data": "synthetic", "iterations": 9, "milestones": [12]}', "milestones is"),
        ("{" + GOOD + ', "settings": [1], ' + CURVES + "}", "settings is not an object"),
        ("{" + GOOD + ', "settings": {"epochs": ' + "9" * 400 + "}, " + CURVES + "}", "settings.epochs is not"),
        ("{" + GOOD + ", " + CURVES + "}", "table is not a list"),
        (
            "{" + GOOD + ', "curves": {"plain-8": {"train": {"steps": [1, 2], "values": [0.5]}}}}',
            "curves['plain-8'].train has 2 steps and 1 values",
        ),
        (
            "{" + GOOD + ', "curves": {"plain-8": {"train": {"steps": [2, 2], "values": [0.5, 0.4]}}}}',
            "curves['plain-8'].train.steps are not increasing",
        ),
        (
            "{" + GOOD + ', "curves": {"plain-8": {"train": {"steps": [1], "values": [7]}}}}',
            "curves['plain-8'].train.values are not error fractions",
        ),
        ("{" + GOOD + ', "curves": {"a\\nb": 3}}', "curves['a\\nb'] is not an object"),
        ("{" + GOOD + ", " + CURVES + ', "table": [{"model": "plain-8", "test_error_mean": 3}]}', "test_error_mean is"),
    ],
)
def test_a_bad_compare_file_is_refused_before_training(
    content: str | None, message: str, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    if content is not None:
        (other / "results.json").write_text(content)
    out = tmp_path / "x"
    assert reproduce("degradation", *TINY, "--iterations", 2, "--depths", 8, "--compare", other, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0] and f"--compare {other}" in errors[0] and "Traceback" not in err
    assert not out.exists()  # refused before anything was trained or written


@pytest.mark.parametrize(
    "args, message",
    [
        (["reproduce", "degradaton"], "unknown experiment 'degradaton' (did you mean degradation?)"),
        (
            ["reproduce", "degradation", "--data", "cifar10", "--data-dir", "{tmp}/empty", "--out", "{tmp}/x"],
            "cifar10 train files not found",
        ),
        (["reproduce", "degradation", "--weights", "w.safetensors"], "degradation does not take --weights"),
        (["reproduce", "degradation", "--data", "synthetic", "--depths", "8,9", "--out", "{tmp}/x"], "6n+2"),
        (["reproduce", "layer-responses", "--from", "{tmp}/none", "--out", "{tmp}/x"], "no finished experiment"),
        (["reproduce", "imagenet-table", "--data-dir", "{tmp}", "--out", "{tmp}/x"], "needs weights"),
        (["reproduce", "degradation", "--data", "synthetic", "--out", "{tmp}/full"], "not a reslab experiment"),
        (["report", "{tmp}/full"], "not a reslab run directory"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not an experiment")
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing is created before the inputs are checked


@pytest.mark.skipif(not FMNIST.is_file(), reason="Debian's dataset-fashion-mnist is not installed")
def test_training_length_from_epochs_on_real_fashion_mnist(tmp_path: Path) -> None:
    """Epochs become iterations from the real dataset's size; the lr drops at 50% and 75%."""
    settings = Settings(data="fashion-mnist", epochs=0.5, overrides=[f"data.cache_dir={tmp_path / 'cache'}"])
    check_data(settings)
    plan = training_plan(settings, checkpoint_each_eval=True)
    assert plan.iterations == math.ceil(0.5 * (60_000 // 128)) == 234  # whole training set, batch 128
    assert plan.milestones == [117, 176] and plan.eval_every == 7
    assert "0.5 epochs of 468 iterations = 234 iterations" in plan.length_note
    assert "data.split=full" in plan.overrides and "train.checkpoint_every=7" in plan.overrides
    assert plan.spec("plain20", 1).overrides[-2:] == ["model.name=plain20", "train.seed=1"]


def test_a_stopped_run_stops_the_experiment_from_starting_more(tmp_path: Path, monkeypatch) -> None:
    """--parallel: when a run stops on a signal (exit 3, checkpoint written), no further run starts."""
    import subprocess

    import reslab.analysis.experiment as experiment

    started = []

    class StoppedAtOnce:  # a `reslab train` process that was stopped by SIGTERM right away
        def __init__(self, args, **kwargs):
            started.append(args)
            self.pid, self.returncode = 4242, None

        def poll(self):
            self.returncode = 3
            return 3

    monkeypatch.setattr(subprocess, "Popen", StoppedAtOnce)
    specs = [experiment.RunSpec(f"resnet_cifar_8-seed{s}", "resnet_cifar_8", s, "cifar-paper", []) for s in range(3)]
    states = {spec.name: "new" for spec in specs}
    with pytest.raises(KeyboardInterrupt):
        experiment._train_in_subprocesses(specs, tmp_path / "runs", states, parallel=2)
    assert len(started) == 2  # the third run was never started
