"""Blocks of rows of the grid: the pieces of synthesis work for large n (toolkit.distributed.blocks)."""
import numpy as np
import pytest
import torch
import xarray as xr

import toolkit
from toolkit.distributed import Block, blocks
from toolkit.probes import probe_takes_rows, run_probes
from toolkit.plugins import Registration, get_registry
from toolkit.testing import register_plugin
from conftest import TINY_RUN

# Records and images come from the synthesis alone; at a micro-batch of one image they cannot
# depend on how the images are grouped, so blocks must give them bit for bit. Features are
# extracted in batches of another make-up, so they may differ in the last bits.
EXACT = ("P", "prototypes", "steps", "loss", "converged", "predicted", "confidence", "B",
         "boundary_success", "boundary_steps", "boundary_gap", "boundary_third_class",
         "adversarial_class", "adversarial_steps")


def test_blocks_depend_on_the_configuration_alone():
    # small grids stay whole, seeds grouped as seed_groups() groups them
    assert blocks([0, 1, 2, 3, 4], 10, 2048) == [Block((0, 1, 2, 3, 4), 0, 10)]
    assert blocks([0, 1, 2], 10, 128) == [Block((0, 1, 2), 0, 10)]
    # CIFAR-100 at the CPU's batch: 17 near-equal blocks of 5 or 6 rows per seed, about 4 batches each
    cut = blocks([0, 1], 100, 128)
    assert len(cut) == 34 and {b.stop - b.start for b in cut} == {5, 6}
    assert [b.seeds for b in cut] == [(0,)] * 17 + [(1,)] * 17
    assert [(b.start, b.stop) for b in cut[:17]] == [(b.start, b.stop) for b in cut[17:]]
    assert cut[0].start == 0 and cut[16].stop == 100
    assert all(a.stop == b.start for a, b in zip(cut, cut[1:17]))
    assert all(3 * 128 <= b.images(100) <= 5 * 128 for b in cut)
    # an explicit size: at most that many rows, near-equal
    assert [(b.start, b.stop) for b in blocks([3], 10, 2048, block_rows=3)] == [
        (0, 2), (2, 5), (5, 7), (7, 10)]
    assert blocks([3], 10, 2048, block_rows=50) == [Block((3,), 0, 10)]
    assert blocks([0, 1], 3, 4, block_rows=1) == [
        Block((0,), 0, 1), Block((0,), 1, 2), Block((0,), 2, 3),
        Block((1,), 0, 1), Block((1,), 1, 2), Block((1,), 2, 3)]
    assert Block((0, 1), 2, 5).images(10) == 2 * 3 * 9     # the diagonal is made before


def test_the_built_in_probes_take_blocks_of_rows():
    assert probe_takes_rows(get_registry("probe").get("boundary"))
    assert probe_takes_rows(get_registry("probe").get("adversarial"))


RUN = {**TINY_RUN, "synthesizer": "boundary", "metrics": "cosine,zscore,mg,madv", "batch_size": 1}


@pytest.fixture(scope="module")
def whole_and_rows(tmp_path_factory):
    from conftest import TinyPlugin

    work = tmp_path_factory.mktemp("blocks") / "rows.work"
    with register_plugin(TinyPlugin(), name="tiny-test-plugin"):
        whole = toolkit.analyze(**RUN)
        rows = toolkit.analyze(**RUN, block_rows=1, work_dir=work)
    return whole, rows, work


@pytest.mark.slow
def test_blocks_of_rows_give_the_grids_of_whole_units(whole_and_rows):
    whole, rows, _ = whole_and_rows
    assert set(rows.data_vars) == set(whole.data_vars)
    for name in whole.data_vars:
        assert rows[name].dims == whole[name].dims, name
        if name in EXACT:
            xr.testing.assert_identical(rows[name], whole[name])
        else:
            xr.testing.assert_allclose(rows[name], whole[name], rtol=1e-5, atol=1e-6)
    assert json_of(rows)["block_rows"] == 1 and json_of(whole)["block_rows"] == "auto"
    assert rows.attrs["image_steps"] == whole.attrs["image_steps"]  # every image counted once


def json_of(ds):
    import json

    return json.loads(ds.attrs["config"])


def test_the_work_directory_holds_each_block_and_the_prototypes_once(whole_and_rows):
    _, rows, work = whole_and_rows
    names = sorted(p.name for p in work.glob("*.npz"))
    assert names == sorted([f"protos-{t:g}-seed-{s}.npz" for t in (0.5, 1) for s in (0, 1)] + [
        f"unit-{t:g}-seed-{s}-rows-{k}-{k + 1}.npz" for t in (0.5, 1) for s in (0, 1) for k in range(3)])
    with np.load(work / "unit-1-seed-1-rows-2-3.npz") as unit:
        np.testing.assert_array_equal(unit["features"], rows["features"].sel(interval=1, seed=1)
                                      .values[2:3])
        np.testing.assert_array_equal(unit["B_features"], rows["B_features"].sel(interval=1, seed=1)
                                      .values[2:3])
        assert unit["adversarial_class"].shape == (1,)          # class 2's, in the block of row 2
    with np.load(work / "protos-1-seed-1.npz") as protos:
        assert protos["images"].dtype == np.float32 and protos["images"].shape == (3, 1, 6, 6)
        np.testing.assert_array_equal(protos["steps"], np.diag(rows["steps"].sel(interval=1, seed=1)))


def whole_only_probe(model, grid, records, settings):
    return {"pixels_mean": grid.mean((2, 3, 4, 5)).numpy()}


class WholeOnly:
    """A third-party metric whose probe takes whole grids only (registered without blocks=True)."""

    @toolkit.hookimpl
    def register_probes(self, register):
        register("pixels", toolkit.Probe(whole_only_probe,
                                         {"pixels_mean": toolkit.Variable(("interval", "seed", "k"))}))

    @toolkit.hookimpl
    def register_metrics(self, register):
        register("pixels", lambda ds: {}, probe="pixels")


def test_a_probe_without_rows_keeps_grids_whole_and_refuses_an_explicit_block_size(tiny_plugin):
    with register_plugin(WholeOnly(), name="whole-only"):
        assert not probe_takes_rows(get_registry("probe").get("pixels"))
        ds = toolkit.analyze(**{**TINY_RUN, "metrics": "cosine,pixels", "seeds": 1})
        assert ds["pixels_mean"].shape == (2, 1, 3)
        with pytest.raises(toolkit.UsageError, match="--block_rows 1: probe 'pixels' "
                                                     "\\(plugin 'whole-only'\\) takes whole grids "
                                                     "only .*leave --block_rows at auto"):
            toolkit.analyze(**{**TINY_RUN, "metrics": "cosine,pixels", "block_rows": 1})
        # a size that keeps grids whole anyway is fine
        toolkit.analyze(**{**TINY_RUN, "metrics": "cosine,pixels", "block_rows": 3, "seeds": 1,
                           "intervals": (1.0,)})


def test_a_probe_with_the_keywords_but_per_seed_variables_takes_whole_grids_only(tiny_plugin):
    class PerSeed:
        @toolkit.hookimpl
        def register_probes(self, register):
            register("spread", toolkit.Probe(
                lambda model, grid, records, settings, *, rows=None, prototypes=None: {
                    "spread": grid.std((1, 2, 3, 4, 5)).numpy()},
                {"spread": toolkit.Variable(("interval", "seed"))}, blocks=True))

        @toolkit.hookimpl
        def register_metrics(self, register):
            register("spread", lambda ds: {}, probe="spread")

    with register_plugin(PerSeed(), name="per-seed"):
        assert not probe_takes_rows(get_registry("probe").get("spread"))
        with pytest.raises(toolkit.UsageError, match="takes whole grids only \\(its variable spread "
                                                     "has interval, seed, not k or class after "
                                                     "interval, seed\\)"):
            toolkit.analyze(**{**TINY_RUN, "metrics": "cosine,spread", "block_rows": 2})
        ds = toolkit.analyze(**{**TINY_RUN, "metrics": "cosine,spread", "seeds": 1})
        assert ds["spread"].dims == ("interval", "seed")


@pytest.mark.parametrize("value", [0, -2, 1.5, "half", True])
def test_a_bad_block_size_is_one_line(value):
    with pytest.raises(toolkit.UsageError, match="--block_rows must be auto or a whole number >= 1"):
        toolkit.AnalysisConfig(block_rows=value)


def test_a_probe_returning_the_wrong_rows_for_a_block_is_named():
    registration = Registration("probe", "m", toolkit.Probe(
        lambda model, grid, records, settings, rows=None, prototypes=None: {
            "x": np.zeros((2, 3))},                     # all 3 classes for a block of 1 row
        {"x": toolkit.Variable(("interval", "seed", "class"))}, blocks=True), "p", {})
    with pytest.raises(toolkit.PluginError, match=r"returned x of shape \(2, 3\) for a block of 2 "
                                                  r"seed\(s\) x 1 row\(s\); its leading dims must be "
                                                  r"\(2, 1\)"):
        run_probes([registration], None, torch.zeros(2, 1, 3, 1, 2, 2), {}, None, rows=range(1, 2),
                   prototypes=torch.zeros(2, 3, 1, 2, 2))


def test_nan_in_a_block_names_its_rows_and_keeps_the_blocks_before_it(tmp_path, tiny_plugin,
                                                                       monkeypatch):
    from toolkit.stages import features as stage

    real, calls = stage.extract_features, []

    def poisoned(model, images, **kwargs):
        features = real(model, images, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # seed 0's block of row 1
            features[0, 0] = float("nan")
        return features

    monkeypatch.setattr(stage, "extract_features", poisoned)
    from toolkit.errors import NumericalError

    with pytest.raises(NumericalError, match="interval 50%, seed 0, row k = 1: 1 of 3 images"):
        toolkit.analyze(out=tmp_path / "r.nc", **{**TINY_RUN, "block_rows": 1})
    assert not (tmp_path / "r.nc").exists()
    assert sorted(p.name for p in (tmp_path / "r.work").glob("unit-*")) == [
        "unit-0.5-seed-0-rows-0-1.npz", "unit-0.5-seed-0-rows-1-2.npz"]  # kept, the faulty one too
