"""Speed options (precision, compile, automatic micro-batch), the trainer's optimizer, and the speed
each run records."""
import io

import numpy as np
import pytest
import torch

import toolkit
from toolkit.config import AnalysisConfig
from toolkit.results import SPEED_ATTRS, dataset_from_features, speed_attrs
from toolkit.synthesis import auto_batch_size
from toolkit.table import summary_table
from conftest import TINY_RUN


@pytest.mark.parametrize("options, message", [
    (dict(precision="fp16"), "unknown --precision 'fp16'; allowed: auto, fp32, bf16, bf16-synthesis; "
                             "did you mean 'bf16'?"),
    (dict(precision="bf16_synthesis"), "unknown --precision 'bf16_synthesis'; allowed: auto, fp32, bf16, "
                                       "bf16-synthesis; did you mean 'bf16-synthesis'?"),
    (dict(precision=32), "unknown --precision 32; allowed: auto, fp32, bf16, bf16-synthesis"),
    (dict(batch_size=0), "--batch_size must be auto or a whole number >= 1; got 0"),
    (dict(batch_size="big"), "--batch_size must be auto or a whole number >= 1; got 'big'"),
    (dict(compile="maybe"), "--compile must be auto, true or false; got 'maybe'"),
])
def test_bad_speed_options_are_one_line_usage_errors(options, message):
    with pytest.raises(toolkit.UsageError) as info:
        AnalysisConfig(**options)
    assert str(info.value) == message


def test_batch_size_defaults_to_auto_and_none_means_auto():
    assert AnalysisConfig().batch_size == "auto"
    assert AnalysisConfig(batch_size=None).batch_size == "auto"
    assert AnalysisConfig(batch_size=64).batch_size == 64


def test_auto_batch_size_follows_the_device_and_the_image_area():
    assert auto_batch_size("cpu", (3, 32, 32)) == 128
    assert auto_batch_size("cpu", (1, 8, 8)) == 2048
    assert auto_batch_size("cpu", (3, 224, 224)) == 16
    assert auto_batch_size("cuda", (3, 32, 32)) == 1024
    assert auto_batch_size(torch.device("cuda", 1), (3, 64, 64)) == 256


def test_summary_prints_image_steps_per_second():
    ds = dataset_from_features(np.random.default_rng(0).random((1, 1, 3, 3, 4)))
    ds.attrs.update(speed_attrs(time_training_s=1.5, time_synthesis_s=4.0, time_features_s=0.2,
                                time_metrics_s=0.1, image_steps=1000, precision="bf16",
                                compile=False, synthesis_batch_size=128), device="cpu")
    assert set(SPEED_ATTRS) <= set(ds.attrs)
    last = summary_table(ds).splitlines()[-1]
    assert last.startswith("speed: 250.0 image-steps/s (1,000 steps, bf16, batch 128, on cpu)")
    assert "training 1.5 s, synthesis 4.0 s, features 0.2 s, metrics 0.1 s" in last


def test_summary_of_a_file_without_speed_records_has_no_speed_line():
    ds = dataset_from_features(np.random.default_rng(0).random((1, 1, 3, 3, 4)))
    assert "image-steps/s" not in summary_table(ds)


@pytest.mark.slow
def test_a_bf16_run_records_its_stages_steps_and_settings(tiny_plugin, tmp_path):
    ds = toolkit.analyze(**{**TINY_RUN, "seeds": 1}, precision="bf16", out=tmp_path / "r.nc")
    with toolkit.open_results(tmp_path / "r.nc") as written:
        attrs = written.attrs
        assert attrs["precision"] == "bf16" and attrs["compile"] == 0 and attrs["device"] == "cpu"
        assert attrs["synthesis_batch_size"] == TINY_RUN["batch_size"]
        assert attrs["image_steps"] == int(ds["steps"].sum()) > 0
        for stage in ("training", "synthesis", "features", "metrics"):
            assert attrs[f"time_{stage}_s"] >= 0
        assert attrs["time_probes_s"] == 0  # no plugin with a probe in this run
        assert attrs["time_training_s"] + attrs["time_synthesis_s"] <= attrs["wall_time_s"]
        assert "image-steps/s" in summary_table(written)
    assert ds["converged"].mean() > 0.5


def _stepped(optimizer_class, steps: int, device: str = "cpu", state: dict | None = None,
             **options) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small channels-last convolutional net after ``steps`` SGD steps on fixed data."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    net = net.to(device, memory_format=torch.channels_last)
    images = torch.randn(8, 2, 5, 5, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(8, device=device) % 3
    defaults = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    optimizer = optimizer_class(net.parameters(), **{**defaults, **options})
    if state is not None:  # through a file, as a checkpoint is written and read (toolkit.workdir)
        file = io.BytesIO()
        torch.save(state, file)
        file.seek(0)
        state = torch.load(file, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    for step in range(steps):
        for group in optimizer.param_groups:  # as the trainer sets it (cosine there)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(0.05 * (1 - step / 10))
            else:
                group["lr"] = 0.05 * (1 - step / 10)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return net, optimizer


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("options", [{}, dict(nesterov=False), dict(weight_decay=0.0),
                                     dict(momentum=0.0, nesterov=False)])
def test_the_trainers_in_place_sgd_steps_exactly_as_torchs(options):
    from toolkit.training import InPlaceSGD

    ours, our_optimizer = _stepped(InPlaceSGD, 6, **options)
    torchs, torch_optimizer = _stepped(torch.optim.SGD, 6, **options)
    assert _same(ours, torchs)
    ours_state, torchs_state = our_optimizer.state_dict(), torch_optimizer.state_dict()
    assert ours_state["param_groups"] == torchs_state["param_groups"]
    assert ours_state["state"].keys() == torchs_state["state"].keys()
    for index, state in ours_state["state"].items():
        assert state.keys() == torchs_state["state"][index].keys()
        assert all(torch.equal(value, torchs_state["state"][index][key]) for key, value in state.items())
    # and it changed the weights: the comparison above is not of two untouched nets
    assert not _same(ours, _stepped(InPlaceSGD, 0, **options)[0])


def test_checkpoints_pass_between_the_in_place_sgd_and_torchs():
    """A run resumed from a checkpoint that torch's SGD wrote (before the trainer had its own)
    continues exactly as torch's would, and the other way round."""
    from toolkit.training import InPlaceSGD

    for first, then in ((torch.optim.SGD, InPlaceSGD), (InPlaceSGD, torch.optim.SGD)):
        net, optimizer = _stepped(first, 3)
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict()}
        resumed, _ = _stepped(then, 3, state=state)
        straight, _ = _stepped(first, 3, state=state)
        assert _same(resumed, straight)


@pytest.mark.parametrize("options", [dict(maximize=True), dict(dampening=0.1, nesterov=False),
                                     dict(foreach=True), dict(lr=torch.tensor(0.05))])
def test_where_the_in_place_path_does_not_apply_torchs_own_step_runs_once(options):
    from toolkit.training import InPlaceSGD

    ours, optimizer = _stepped(InPlaceSGD, 4, **options)
    torchs, _ = _stepped(torch.optim.SGD, 4, **options)  # SGD.step is now wrapped with the hooks
    assert _same(ours, torchs)
    # torch's path leaves the gradients as they are, and runs the optimizer's hooks once
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), torchs.parameters()))
    hooks = []
    optimizer.register_step_pre_hook(lambda *_: hooks.append("pre"))
    optimizer.register_step_post_hook(lambda *_: hooks.append("post"))
    optimizer.step()
    assert hooks == ["pre", "post"]


def test_the_trainer_steps_with_the_in_place_sgd():
    from toolkit.training import InPlaceSGD, TrainingSettings

    assert type(TrainingSettings(epochs=1).optimizer([torch.nn.Parameter(torch.zeros(2))])) is InPlaceSGD


def test_on_the_cpu_the_update_is_computed_in_the_gradients_memory():
    """The path that makes it faster runs: each gradient now holds the update it applied, where
    torch's SGD leaves the gradient (the weights being the same, bit for bit)."""
    from toolkit.training import InPlaceSGD

    ours, _ = _stepped(InPlaceSGD, 2)
    torchs, _ = _stepped(torch.optim.SGD, 2)
    assert _same(ours, torchs)
    for mine, theirs in zip(ours.parameters(), torchs.parameters()):
        assert not torch.equal(mine.grad, theirs.grad)
