"""The command line: bad input is one line on stderr, exit status 2, and nothing written."""
import json
import subprocess
import sys

import pytest

from toolkit.__main__ import main
from toolkit.config import AnalysisConfig

BAD = [
    (["--model", "resnet99"], "unknown model 'resnet99'; known models: resnet18, resnet18-tv, timm:<name>"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; known datasets: cifar10, cifar100, digits"),
    (["--synthesizer", "magic"], "unknown synthesizer 'magic'; known synthesizers: prototype"),
    (["--metrics", "cosine,nope"], "unknown metric 'nope'; known metrics: cosine, zscore"),
    (["--intervals", "0.5,0.25"], "--intervals must be strictly increasing"),
    (["--intervals", "0.5,0.5"], "--intervals must be strictly increasing without duplicates"),
    (["--intervals", "0,0.5"], "--intervals must lie in (0, 1]"),
    (["--intervals", "0.5,1.5"], "--intervals must lie in (0, 1]"),
    (["--seeds", "0"], "--seeds must be a whole number >= 1; got 0"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--loss_threshold", "0"], "--loss_threshold must be a positive number"),
    (["--schedule", "weekly"], "unknown --schedule 'weekly'; allowed: data, epochs"),
    (["--device", "tpu"], "unknown --device 'tpu'; allowed: auto, cpu, cuda, cuda:<index>"),
    (["--metric_options", '{"zscore": {"reference": "galaxy"}}'],
     "zscore reference must be one of pooled, seed, seed_means"),
    (["--metric_options", '{"zscore": {"colour": 1}}'], "metric 'zscore' does not take options"),
    (["--dataset", "cifar10", "--nodownload"], "CIFAR-10 is not in"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.nc"
    argv = ["analyze", *args, "--out", str(out), "--data_root", str(tmp_path / "data"), "--noprogress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("toolkit: error: ")
    assert message in err
    assert not out.exists() and not (tmp_path / "r.work").exists()
    assert not (tmp_path / "results").exists()


def test_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "r.nc"
    out.write_text("keep me")
    assert main(["analyze", "--out", str(out), "--noprogress"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_output_in_a_missing_folder_is_refused(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path / "nope" / "r.nc"), "--noprogress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_of_a_missing_file(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "none.nc")]) == 2
    assert "no results file" in capsys.readouterr().err


def test_plugins_lists_the_builtins_as_json(capsys):
    assert main(["plugins", "--all"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["toolkit_plugins.models"]["registers"]["models"] == ["resnet18", "resnet18-tv", "timm:"]
    assert listed["toolkit_plugins.metrics"]["hooks"] == ["register_metrics"]


def test_plugins_without_all_lists_only_third_party(capsys, tiny_plugin):
    assert main(["plugins"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == ["tiny-test-plugin"]
    assert listed[0]["registers"] == {"models": ["tiny-cnn"], "datasets": ["tiny"], "metrics": ["gap"]}


def test_help_comes_from_docstrings():
    run = subprocess.run([sys.executable, "-m", "toolkit", "analyze", "--help"], capture_output=True,
                         text=True, env={"PAGER": "cat", "PATH": "/usr/bin:/bin"}, timeout=120)
    shown = run.stdout + run.stderr  # Fire writes help to stderr
    assert run.returncode == 0
    assert "Run the whole study and write one results file" in shown
    assert "--loss_threshold" in shown and "(the poster: 5)" in shown


def test_real_entry_point_exits_2_on_bad_input():
    run = subprocess.run([sys.executable, "-m", "toolkit", "analyze", "--seeds", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == "toolkit: error: --seeds must be a whole number >= 1; got 0\n"


def test_config_parses_comma_lists_and_records_itself_as_json():
    config = AnalysisConfig(intervals="0.5, 1", metrics="cosine", seeds=2)
    assert config.intervals == (0.5, 1.0) and config.metrics == ("cosine",)
    assert AnalysisConfig.from_json(config.to_json()) == config
    assert config.seed_values == [0, 1]


def test_dataset_defaults_fill_only_what_the_user_left_open():
    config = AnalysisConfig(lr=0.3).with_dataset_defaults({"lr": 0.01, "epochs": 7})
    assert config.lr == 0.3 and config.epochs == 7
    assert config.crop_padding == 0 and config.flip is False and config.max_steps == 1000


def test_default_output_folder_is_not_created_for_a_failed_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--model", "nope", "--noprogress"]) == 2
    assert list(tmp_path.iterdir()) == []
