"""One option surface (issue 17 part 3, issue 18): every option declared once; unknown options
refused before any work with the closest one named; limits, booleans and help from the table."""
import dataclasses
import functools
import json
import subprocess
import sys
import time

import pytest
import torch

import toolkit
import toolkit.pipeline
from toolkit.__main__ import main
from toolkit.arguments import help_text
from toolkit.cli import Toolkit
from toolkit.config import FALLBACKS, OPTIONS, RUN_OPTIONS, AnalysisConfig
from toolkit.options import parse_bool


@pytest.fixture
def no_work(monkeypatch):
    """Any call that would start the study fails the test."""
    import toolkit.pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("the study started")

    monkeypatch.setattr(toolkit.pipeline, "analyze", forbidden)


@pytest.fixture
def captured(monkeypatch):
    """Run ``analyze`` up to the library call and keep what it was given."""
    import toolkit.pipeline

    calls = []

    def fake(config, **run):
        calls.append((config, run))
        return None  # as a torchrun rank other than 0: nothing printed

    monkeypatch.setattr(toolkit.pipeline, "analyze", fake)
    return calls


UNKNOWN = [
    (["analyze", "--sedes", "3"], "unknown option --sedes for analyze; did you mean --seeds?"),
    (["analyze", "--max-step", "5"], "unknown option --max-step for analyze; did you mean --max_steps?"),
    (["analyze", "--max_step=5"], "unknown option --max_step for analyze; did you mean --max_steps?"),
    (["analyze", "--noprogres"], "unknown option --noprogres for analyze; did you mean --noprogress?"),
    (["summary", "x.nc", "--resluts", "y"], "unknown option --resluts for summary; did you mean --results?"),
    (["quality", "x.nc", "--overwrit"], "unknown option --overwrit for quality; did you mean --overwrite?"),
    (["plot", "x.nc", "--fromat", "pdf"], "unknown option --fromat for plot; did you mean --format?"),
    (["report", "x.nc", "--intervall", "1"], "unknown option --intervall for report; did you mean --interval?"),
    (["plugins", "--al"], "unknown option --al for plugins; did you mean --all?"),
    (["plugins", "--plugin_dir", "x"], "unknown option --plugin_dir for plugins; did you mean --plugins_dir?"),
    (["--disable-plugin", "x", "plugins"], "unknown option --disable-plugin before the command; did you "
                                           "mean --disable_plugins?"),
    (["analyse", "--seeds", "3"], "unknown command 'analyse'; did you mean analyze?"),
    (["metrics", "x.nc", "--metircs", "mg"], "unknown option --metircs for metrics; did you mean --metrics?"),
    (["rank", "a.pt", "--datset", "digits"], "unknown option --datset for rank; did you mean --dataset?"),
    # a stray value: Fire would refuse it only after the whole study
    (["analyze", "--seeds", "3", "5"], "unexpected argument '5' for analyze after --seeds 3: each option "
                                       "takes one value, and analyze takes no positional argument"),
    (["summary", "a.nc", "b.nc"], "unexpected argument 'b.nc' for summary: each option takes one value, "
                                  "and summary takes 1 positional argument"),
    (["plot", "r.nc", "--figures", "means", "spreads"], "unexpected argument 'spreads' for plot after "
                                                        "--figures means: each option takes one value"),
    (["analyze", "--seed", "3", "--seed_start", "4"], "--seed and --seed_start both given"),
    (["analyze", "--seed_start=4", "--seed", "3"], "--seed and --seed_start both given"),
]


@pytest.mark.parametrize("argv, message", UNKNOWN)
def test_an_unknown_option_is_refused_before_any_work(tmp_path, monkeypatch, capsys, no_work, argv,
                                                     message):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.startswith(f"toolkit: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_misspelt_option_on_the_real_command_line_does_no_work(tmp_path):
    run = subprocess.run([sys.executable, "-m", "toolkit", "analyze", "--sedes", "3", "--out",
                          str(tmp_path / "r.nc")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == "toolkit: error: unknown option --sedes for analyze; did you mean --seeds?\n"
    assert list(tmp_path.iterdir()) == []


def test_dash_and_underscore_spellings_and_fires_forms_all_work(tmp_path, captured):
    out = tmp_path / "r.nc"
    assert main(["analyze", "--max-steps", "7", "--train-batch-size=9", "--noprogress", "--no-plots",
                 "--save_images=false", "--compile", "--out", str(out)]) == 0
    config, run = captured[0]
    assert config.max_steps == 7 and config.train_batch_size == 9
    assert config.save_images is False and config.compile is True
    assert run["progress"] is False and run["plots"] is False and run["out"] == out


@pytest.mark.parametrize("word, value", [("true", True), ("TRUE", True), ("Yes", True), ("1", True),
                                         ("false", False), ("No", False), ("0", False), ("OFF", False)])
def test_booleans_take_true_false_yes_no_1_0_in_any_case(tmp_path, captured, word, value):
    assert main(["analyze", "--compile", word, "--download", word, "--flip", word, "--overwrite",
                 word, "--progress", word, "--out", str(tmp_path / "r.nc")]) == 0
    config, run = captured[0]
    assert (config.compile, config.download, config.flip) == (value, value, value)
    assert run["overwrite"] is value and run["progress"] is value
    assert AnalysisConfig(compile=word, save_images=word).compile is value


@pytest.mark.parametrize("argv", [[], ["--compile", "auto"], ["--compile", " AUTO"]])
def test_compile_is_auto_unless_told(tmp_path, captured, argv):
    assert main(["analyze", *argv, "--out", str(tmp_path / "r.nc")]) == 0
    assert captured[0][0].compile == "auto"


def test_a_word_that_is_not_a_boolean_is_refused(capsys):
    assert main(["analyze", "--flip", "maybe"]) == 2
    assert capsys.readouterr().err == "toolkit: error: --flip must be true or false; got 'maybe'\n"
    assert main(["analyze", "--compile", "maybe"]) == 2
    assert capsys.readouterr().err == "toolkit: error: --compile must be auto, true or false; got 'maybe'\n"
    with pytest.raises(toolkit.UsageError, match="--all must be true or false"):
        parse_bool("all", "sometimes")


HUGE = 10**23
LIMITS = [
    ("seeds", HUGE, f"--seeds must be at most 10000; got {HUGE}"),
    ("seed_start", 10**24, f"--seed_start must be at most {2**31 - 1}; got {10**24}"),
    ("seed_start", 2**31, f"--seed_start must be at most {2**31 - 1}; got {2**31}"),
    ("epochs", HUGE, f"--epochs must be at most 10000; got {HUGE}"),
    ("max_steps", HUGE, f"--max_steps must be at most 1000000; got {HUGE}"),
    ("fixed_steps", HUGE, f"--fixed_steps must be at most 1000000; got {HUGE}"),
    ("batch_size", HUGE, f"--batch_size must be at most {2**20}; got {HUGE}"),
    ("block_rows", HUGE, f"--block_rows must be at most 1000000; got {HUGE}"),
    ("train_batch_size", HUGE, f"--train_batch_size must be at most {2**20}; got {HUGE}"),
    ("crop_padding", HUGE, f"--crop_padding must be at most 1024; got {HUGE}"),
]


@pytest.mark.parametrize("name, value, message", LIMITS)
def test_huge_numbers_are_refused_before_any_work(tmp_path, monkeypatch, capsys, no_work, name, value,
                                                  message):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", f"--{name}", str(value), "--out", str(tmp_path / "new" / "r.nc")]) == 2
    assert capsys.readouterr().err == f"toolkit: error: {message}\n"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(toolkit.UsageError, match="must be at most"):
        AnalysisConfig(**{name: value})


def test_every_seed_must_fit_32_bits():
    with pytest.raises(toolkit.UsageError, match="the last seed 2147483648 must be at most 2147483647"):
        AnalysisConfig(seed_start=2**31 - 1, seeds=2)
    assert AnalysisConfig(seed_start=2**31 - 1, seeds=1).seed_values == [2**31 - 1]


def test_the_first_seed_is_seed_start_and_the_old_seed_still_works_with_a_warning(
        tmp_path, monkeypatch, capsys, no_work):
    # "--seed 3" read as "3 seeds" ran one seed numbered 3: the first seed is now --seed_start.
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--seed", str(2**31), "--out", "r.nc"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["toolkit: warning: --seed is deprecated, use --seed_start (the first seed; the "
                   "number of seeds is --seeds)",
                   f"toolkit: error: --seed_start must be at most {2**31 - 1}; got {2**31}"]
    # Files written before the rename still read: their config records "seed".
    old = json.loads(AnalysisConfig(seed_start=4).to_json())
    old["seed"] = old.pop("seed_start")
    assert AnalysisConfig.from_json(json.dumps(old)).seed_values[0] == 4
    assert "--seed_start" in help_text("analyze") and "\n  --seed " not in help_text("analyze")
    assert main(["plot", "x.nc", "--seed", "1"]) == 2  # plot's own --seed (which seed to draw) stays
    assert "deprecated" not in capsys.readouterr().err


def test_the_old_seed_option_in_python_warns_and_passes_seed_start(tmp_path, monkeypatch):
    given = {}
    monkeypatch.setattr(toolkit.pipeline, "analyze", functools.wraps(toolkit.pipeline.analyze)(
        lambda config=None, **options: given.update(options)))
    with pytest.warns(FutureWarning, match="--seed is deprecated, use --seed_start"):
        toolkit.analyze(seed=3, out=tmp_path / "r.nc")
    assert given["seed_start"] == 3 and "seed" not in given
    with pytest.raises(toolkit.UsageError, match="--seed and --seed_start both given"):
        toolkit.analyze(seed=1, seed_start=1, out=tmp_path / "r.nc")


def test_the_limits_are_stated_in_help():
    shown = help_text("analyze")
    for opt in OPTIONS:
        if opt.limits():
            assert f"whole number {opt.limits()}" in shown, opt.name


def test_analyze_help_shows_every_option_whole():
    shown = " ".join(help_text("analyze").split())
    for opt in OPTIONS + RUN_OPTIONS:
        assert f"--{opt.name}" in shown
        assert " ".join(opt.help.split()) in shown, f"--{opt.name}'s help is cut"
    assert "Type:" not in shown and "Optional[" not in shown


@pytest.mark.slow
def test_help_of_the_real_entry_point_lists_every_command():
    run = subprocess.run([sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stderr == ""
    commands = sorted(name for name in vars(Toolkit) if not name.startswith("_"))
    assert "quality" in commands
    for name in commands:
        assert f"\n  {name} " in run.stdout
    for name in ("plugins_dir", "disable_plugins"):
        assert f"--{name}" in run.stdout


@pytest.mark.parametrize("command", ["summary", "quality", "plot", "report", "plugins"])
def test_every_command_has_help(capsys, command):
    assert main([command, "--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"Usage: toolkit {command}")
    assert "Type:" not in shown


def test_plugins_without_all_says_the_builtins_are_hidden(capsys):
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []  # stdout stays JSON
    assert captured.err == ("toolkit: note: no plugins besides the built-in ones, which are hidden; "
                            "pass --all to list them too\n")
    assert main(["plugins", "--all", "yes"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) and captured.err == ""


def test_the_output_folder_is_created_after_validation(tmp_path, captured, capsys):
    out = tmp_path / "results" / "c10.nc"
    assert main(["analyze", "--out", str(out)]) == 0
    assert captured[0][1]["make_folder"] is True
    assert main(["analyze", "--seeds", "0", "--out", str(tmp_path / "other" / "r.nc")]) == 2
    assert not (tmp_path / "other").exists()


def test_an_output_folder_that_cannot_be_created_is_refused_before_work(tmp_path, no_work, capsys):
    (tmp_path / "file").write_text("")
    assert main(["analyze", "--out", str(tmp_path / "file" / "sub" / "r.nc")]) == 2
    assert "cannot be created" in capsys.readouterr().err


def test_the_cli_and_the_library_take_the_same_options():
    import inspect

    cli = set(inspect.signature(Toolkit.analyze).parameters) - {"self"}
    assert cli == {f.name for f in dataclasses.fields(AnalysisConfig)} | {o.name for o in RUN_OPTIONS}
    with pytest.raises(toolkit.UsageError, match="unknown option --sedes for analyze; did you mean --seeds"):
        Toolkit().analyze(sedes=3)


def test_defaults_live_in_one_place():
    from toolkit.training import TrainingSettings

    synthesis, training = toolkit.SynthesisSettings(), TrainingSettings(epochs=1)
    assert (synthesis.lr, synthesis.max_steps) == (FALLBACKS["lr"], FALLBACKS["max_steps"])
    assert synthesis.loss_threshold == AnalysisConfig.loss_threshold
    assert (training.lr, training.batch_size) == (FALLBACKS["train_lr"], FALLBACKS["train_batch_size"])
    assert (training.momentum, training.weight_decay) == (AnalysisConfig.momentum,
                                                          AnalysisConfig.weight_decay)
    assert FALLBACKS == {"epochs": 10, "train_lr": 0.05, "train_batch_size": 128, "crop_padding": 0,
                         "flip": False, "lr": 0.1, "max_steps": 1000}
    for opt in OPTIONS:
        assert opt.help and opt.name in AnalysisConfig.__doc__


def test_the_trainers_optimizer_is_built_from_its_settings():
    # benchmarks/train_step.py times this optimizer: it must be the one the trainer steps
    from toolkit.training import TrainingSettings

    weights = [torch.nn.Parameter(torch.zeros(3))]
    group = TrainingSettings(epochs=1, lr=0.2, momentum=0.8, weight_decay=1e-3).optimizer(
        weights).param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.2, 0.8, 1e-3, True)
    assert group["params"] == weights
    plain = TrainingSettings(epochs=1, momentum=0.0).optimizer(weights).param_groups[0]
    assert (plain["momentum"], plain["nesterov"]) == (0.0, False)


def test_the_json_record_is_unchanged():
    # hashed into default output names and run identities: must not change with the declarations
    # (it changed on purpose twice: the default precision became auto, then compile became auto
    # and left the identity; each time default names moved)
    assert AnalysisConfig().to_json() == (
        '{"batch_size": "auto", "block_rows": "auto", "compile": "auto", "crop_padding": null, '
        '"data_root": null, "dataset": "digits", "device": "auto", "download": true, "epochs": null, '
        '"fixed_steps": null, "flip": null, "intervals": [0.25, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0], '
        '"loss_threshold": 0.01, "lr": null, "max_steps": null, "metric_options": {}, '
        '"metrics": ["cosine", "zscore"], "model": "resnet18", "momentum": 0.9, "nonfinite": "stop", '
        '"precision": "auto", "save": null, "save_images": null, "schedule": "data", "seed_start": 0, '
        '"seeds": 5, "synthesizer": "prototype", "train_batch_size": null, "train_lr": null, '
        '"weight_decay": 0.0005}')


def test_the_python_api_names_the_closest_option_too(tmp_path):
    with pytest.raises(toolkit.UsageError, match="unknown option 'sedes' for toolkit.analyze; did you "
                                                  "mean 'seeds'?"):
        toolkit.analyze(sedes=3, out=tmp_path / "r.nc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, fire_gets", [
    (["plugins", "-a"], ["plugins", "--all"]),  # Fire's one-letter form, when unambiguous
    (["analyze", "-seeds", "3", "--no-compile"], ["analyze", "--seeds", "3", "--nocompile"]),
    (["analyze", "--lr", "-0.5", "--max-steps=4"], ["analyze", "--lr", "-0.5", "--max_steps=4"]),
    (["--plugins_dir", "d", "plot", "x.nc", "--", "--trace"],
     ["--plugins_dir", "d", "plot", "x.nc", "--", "--trace"]),  # after --: Fire's own flags
])
def test_what_fire_receives(argv, fire_gets):
    from toolkit.arguments import prepare

    assert prepare(argv) == (fire_gets, None)


def test_an_ambiguous_one_letter_option_is_refused():
    from toolkit.arguments import prepare

    with pytest.raises(toolkit.UsageError, match=r"option -s for analyze is ambiguous \(--save, "):
        prepare(["analyze", "-s", "3"])


def test_help_wins_over_a_stray_value(capsys):
    assert main(["analyze", "--seeds", "3", "5", "--help"]) == 0
    assert "--seed_start" in capsys.readouterr().out


def test_the_config_takes_and_gives_the_old_seed_name_with_a_warning():
    with pytest.warns(FutureWarning, match="--seed is deprecated, use --seed_start"):
        config = toolkit.AnalysisConfig(seed=3)
    assert config.seed_start == 3
    with pytest.warns(FutureWarning, match="--seed is deprecated"):
        assert config.seed == 3
    with pytest.raises(toolkit.UsageError, match="--seed and --seed_start both given"):
        toolkit.AnalysisConfig(seed=3, seed_start=4)
