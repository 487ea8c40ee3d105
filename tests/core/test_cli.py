"""The command line: bad input is one line on stderr, exit status 2, and nothing written."""
import json
import os
import subprocess
import sys

import pytest
import torch
import xarray as xr

from toolkit.__main__ import main
from toolkit.config import AnalysisConfig

def corrupt_cifar(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"\x80\x04 not really a pickle")


def foreign_checkpoints(tmp_path):
    (tmp_path / "ckpt").mkdir()
    for t in ("0.5", "1"):
        torch.save({"fc.weight": torch.zeros(7, 512)}, tmp_path / "ckpt" / f"interval-{t}.pt")


def read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # permission bits do not stop root; the immutable attribute does
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (no chattr)")


BAD = [
    (["--model", "resnet99"], "unknown model 'resnet99'; known models: resnet18, resnet18-tv, timm:<name>"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; known datasets: cifar10, cifar100, digits"),
    (["--synthesizer", "magic"], "unknown synthesizer 'magic'; known synthesizers: boundary, prototype"),
    (["--metrics", "cosine,nope"],
     "unknown metric 'nope'; known metrics: cosine, cosine_summaries, madv, mg, noise_confidence, weight_norm, ww_alpha, zscore"),
    (["--intervals", ""], "--intervals is empty; give training fractions in (0, 1]"),
    (["--intervals", "0.5,0.25"], "--intervals must be strictly increasing"),
    (["--intervals", "0.5,0.5"], "--intervals must be strictly increasing without duplicates"),
    (["--intervals", "0,0.5"], "--intervals must lie in (0, 1]"),
    (["--intervals", "0.5,1.5"], "--intervals must lie in (0, 1]"),
    (["--seeds", "0"], "--seeds must be a whole number >= 1; got 0"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--loss_threshold", "0"], "--loss_threshold must be a positive number"),
    (["--loss_threshold", "-0.01"], "--loss_threshold must be a positive number"),
    (["--train_lr", "-1"], "--train_lr must be a positive number"),
    (["--nonfinite", "ignore"], "unknown --nonfinite 'ignore'; allowed: stop, record"),
    (["--metrics", "zscore"], "zscore needs variable 'C'; list a metric that makes it"),
    (["--schedule", "weekly"], "unknown --schedule 'weekly'; allowed: data, epochs"),
    (["--device", "tpu"], "unknown --device 'tpu'; allowed: auto, cpu, cuda, cuda:<index>"),
    (["--metric_options", '{"zscore": {"reference": "galaxy"}}'],
     "zscore reference must be one of pooled, seed, seed_means"),
    (["--metric_options", '{"zscore": {"colour": 1}}'], "metric 'zscore' does not take options"),
    (["--dataset", "cifar10", "--nodownload"], "CIFAR-10 is not in"),
    (["--dataset", "cifar10", "--nodownload"], "data_batch_1 is not a CIFAR python batch", corrupt_cifar),
    (["--checkpoints", "{tmp}/ckpt", "--intervals", "0.5,1"], "does not fit model 'resnet18' for 10 classes",
     foreign_checkpoints),
    (["--checkpoints", "{tmp}/none"], "--checkpoints '{tmp}/none' is not a folder"),
    (["--out", "{tmp}/locked/r.nc"], "--out folder '{tmp}/locked' is not writable", read_only_folder),
]


@pytest.mark.parametrize("args, message, setup", [(*case, None)[:3] for case in BAD])
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch, args, message,
                                                          setup):
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "r.nc"
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    argv = ["analyze", "--out", str(out), *args, "--data_root", str(tmp_path / "data"), "--noprogress"]
    try:
        assert main(argv) == 2
    finally:
        if (tmp_path / "locked").exists():
            subprocess.run(["chattr", "-i", str(tmp_path / "locked")], capture_output=True)
            (tmp_path / "locked").chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("toolkit: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing removed


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("just text"), "is not a readable netCDF file"),
    (lambda p: xr.Dataset({"x": ("t", [1.0])}).to_netcdf(p), "is not a toolkit results file"),
    (lambda p: xr.Dataset(attrs={"toolkit_schema_version": 99}).to_netcdf(p),
     "has results schema version 99; this toolkit reads version 1"),
])
def test_a_results_file_that_is_not_ours_is_refused(tmp_path, capsys, make, message):
    path = tmp_path / "x.nc"
    make(path)
    assert main(["summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "r.nc"
    out.write_text("keep me")
    assert main(["analyze", "--out", str(out), "--noprogress"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_output_in_a_missing_folder_creates_it(tmp_path, capsys, tiny_plugin):
    from conftest import TINY_RUN

    args = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY_RUN.items()]
    out = tmp_path / "results" / "new" / "r.nc"
    assert main(["analyze", *args, "--out", str(out), "--noprogress", "--noplots"]) == 0
    assert out.is_file() and f"results: {out}" in capsys.readouterr().out


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


@pytest.mark.slow
def test_help_comes_from_docstrings():
    run = subprocess.run([sys.executable, "-m", "toolkit", "analyze", "--help"], capture_output=True,
                         text=True, env={"PAGER": "cat", "PATH": "/usr/bin:/bin"}, timeout=120)
    shown = run.stdout + run.stderr  # Fire writes help to stderr
    assert run.returncode == 0
    assert "Run the whole study and write one results file" in shown
    assert "--loss_threshold" in shown and "(the poster: 5)" in shown


@pytest.mark.slow
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
