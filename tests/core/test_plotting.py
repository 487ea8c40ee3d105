"""Every figure, drawn from a small results file made here, checked for what it shows."""
import json
import warnings

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection

import toolkit
from toolkit import plotting, results
from toolkit.config import AnalysisConfig
from toolkit_plugins.metrics import cosine, zscore

INTERVALS = (0.25, 0.5, 1.0)


def make_results(intervals=INTERVALS, seeds=(0, 1), n=4, channels=1, size=5, grid=True,
                 metrics=("cosine", "zscore"), class_names=None) -> xr.Dataset:
    """A complete results Dataset with made-up numbers and images, as analyze would write it."""
    rng = np.random.default_rng(0)
    t, s = len(intervals), len(seeds)
    shape = (t, s, n, n)
    loss = 10 ** rng.uniform(-4, 0, shape)
    converged = loss < 0.01
    steps = np.where(converged, rng.integers(1, 80, shape), 100)
    images = rng.integers(0, 256, (t, s, n, n, channels, size, size), dtype=np.uint8)
    diagonal = np.arange(n)
    ds = results.build_dataset(
        intervals=intervals, seeds=seeds,
        class_names=class_names or [f"class{c}" for c in range(n)],
        features=rng.random((t, s, n, n, 6)).astype(np.float32),
        records=dict(steps=steps, loss=loss, converged=converged,
                     predicted=np.broadcast_to(diagonal[:, None], shape),
                     confidence=rng.random(shape)),
        test_accuracy=np.linspace(0.4, 0.9, t), train_size=[100] * t,
        images={"noise": rng.integers(0, 256, (s, n, channels, size, size), dtype=np.uint8),
                "prototypes": images[:, :, diagonal, diagonal],
                **({"P": images} if grid else {})})
    if "cosine" in metrics:
        ds = ds.assign(cosine(ds))
    if "zscore" in metrics:
        ds = ds.assign(zscore(ds))
    config = AnalysisConfig(model="resnet18", dataset="digits", intervals=intervals, seeds=s,
                            metrics=metrics, max_steps=100)
    ds.attrs.update(results.provenance(config.to_json(), model="resnet18", dataset="digits"))
    return ds


@pytest.fixture(scope="module")
def ds():
    return make_results()


def test_titles_name_model_dataset_and_seeds(ds):
    assert plotting.run_title(ds) == "resnet18 on digits, 2 seeds (0-1)"
    assert plotting.run_title(ds.isel(seed=[1])) == "resnet18 on digits, seed 1"
    for name, spec in plotting.registered_figures().items():
        if spec.optional:  # drawn only from files that hold its data (tested with them)
            continue
        fig = plotting.render(ds, name)
        assert "resnet18 on digits, 2 seeds (0-1)" in fig.get_suptitle(), name


@pytest.mark.parametrize("name, stat", [("means", "mean"), ("spreads", "std")])
def test_c_and_r_lines_are_the_files_summaries_with_a_seed_band(ds, name, stat):
    fig = plotting.render(ds, name)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "training completed (%)"
    assert "1 - cos" in ax.get_ylabel()
    lines = ax.get_lines()
    assert len(lines) == 2
    for line, v in zip(lines, ("C", "R")):
        np.testing.assert_allclose(line.get_xdata(), np.array(INTERVALS) * 100)
        np.testing.assert_allclose(line.get_ydata(), ds[f"{v}_{stat}"].values)
        assert line.get_label().startswith(v)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    # the band's upper edge is the summary plus the std across seeds of the per-seed values
    top = bands[0].get_paths()[0].vertices[:, 1].max()
    spread = ds[f"C_seed_{stat}"].std("seed")
    assert top == pytest.approx(float((ds[f"C_{stat}"] + spread).max()))


def test_outlier_bars_are_the_files_fractions_and_the_reference_is_written(ds):
    fig = plotting.render(ds, "outliers")
    (ax,) = fig.axes
    bars = ax.patches
    assert len(bars) == 2 * len(INTERVALS)
    heights = [b.get_height() for b in bars]
    np.testing.assert_allclose(heights[:3], ds["C_outlier_fraction"].values * 100)
    np.testing.assert_allclose(heights[3:], ds["R_outlier_fraction"].values * 100)
    assert ax.get_ylabel() == "outliers (% of values)"
    text = " ".join(t.get_text() for t in fig.texts)
    assert "|z| > 3" in text and "pooled reference" in text
    assert [t.get_text() for t in ax.get_xticklabels()] == ["25", "50", "100"]
    assert any("Chebyshev" in line.get_label() for line in ax.get_lines())


def test_accuracy_is_drawn_above_the_means_on_a_shared_axis(ds):
    fig = plotting.render(ds, "accuracy")
    top, bottom = fig.axes[:2]
    np.testing.assert_allclose(top.get_lines()[0].get_ydata(), ds["test_accuracy"].values * 100)
    assert top.get_ylabel() == "test accuracy (%)"
    assert len(bottom.get_lines()) == 2
    assert top.get_shared_x_axes().joined(top, bottom)
    assert "correlation with accuracy" in top.get_legend().get_title().get_text()


def test_prototype_mosaic_holds_the_noise_then_each_intervals_prototype(ds):
    fig = plotting.render(ds, "prototypes", seed=1)
    (ax,) = fig.axes
    assert len(ax.images) == 1
    image = ax.images[0].get_array()
    size, pad = 5, 1
    tile = lambda r, c: image[r * (size + pad):r * (size + pad) + size,  # noqa: E731
                              c * (size + pad):c * (size + pad) + size]
    np.testing.assert_array_equal(tile(2, 0), ds["noise"].sel(seed=1).isel({"class": 2, "channel": 0}))
    np.testing.assert_array_equal(
        tile(2, 3), ds["prototypes"].sel(seed=1).isel({"interval": 2, "class": 2, "channel": 0}))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["class0", "class1", "class2", "class3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["start\n(noise)", "25%", "50%", "100%"]
    assert "seed 1" in fig.get_suptitle()


def test_grid_shows_p_rows_k_columns_j_and_crosses_out_unconverged(ds):
    fig = plotting.render(ds, "grid", interval=0.5, seed=0)
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    size = 5  # tiles of 5 pixels, 1 pixel apart
    at = dict(interval=0.5, seed=0)
    k, j = 1, 3
    np.testing.assert_array_equal(image[k * 6:k * 6 + size, j * 6:j * 6 + size],
                                  ds["P"].sel(at).isel(k=k, j=j, channel=0))
    assert ax.get_ylabel().startswith("target class k") and ax.get_xlabel().startswith("origin class j")
    crosses = ax.collections[0].get_offsets()
    assert len(crosses) == int((~ds["converged"].sel(at)).sum())
    assert len(ax.patches) == 4  # the outlined diagonal
    assert "50% of training, seed 0" in fig.get_suptitle()


def test_grid_of_many_classes_shows_a_readable_subset():
    big = make_results(intervals=(1.0,), seeds=(0,), n=30, size=3, metrics=("cosine",))
    fig = plotting.render(big, "grid")
    assert len(fig.axes[0].get_yticklabels()) == plotting.MAX_CLASSES
    assert ", 20 of 30 classes shown" in fig.get_suptitle()
    fig = plotting.render(big, "grid", classes=["class3", 5])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["class3", "class5"]


def test_colour_images_are_drawn_in_colour():
    rgb = make_results(intervals=(1.0,), seeds=(0,), n=3, channels=3, metrics=("cosine",))
    image = plotting.render(rgb, "prototypes").axes[0].images[0].get_array()
    assert image.ndim == 3 and image.shape[-1] == 3


def test_heatmaps_share_one_scale_and_average_to_the_files_means(ds):
    fig = plotting.render(ds, "heatmaps")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * len(INTERVALS)
    assert len({ax.images[0].get_clim() for ax in panels}) == 1
    for index, ax in enumerate(panels):
        v, t = ("C", "R")[index // len(INTERVALS)], index % len(INTERVALS)
        shown = np.asarray(ax.images[0].get_array())
        assert shown.shape == (4, 4)
        assert shown.mean() == pytest.approx(float(ds[f"{v}_mean"][t]), rel=1e-5)
    colorbar = [ax for ax in fig.axes if not ax.images][0]
    assert "1 - cos" in colorbar.get_ylabel()


def test_convergence_histograms_count_every_image_and_the_unconverged(ds):
    fig = plotting.render(ds, "convergence")
    left, right = fig.axes
    total = ds["converged"].size
    unconverged = int((~ds["converged"]).sum())
    for ax in (left, right):
        heights = [b.get_height() for b in ax.patches]
        assert sum(heights) == pytest.approx(total)
        assert f"not converged ({unconverged})" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert right.get_xscale() == "log"
    per_interval = (~ds["converged"]).sum(("seed", "k", "j")).values
    note = fig.texts[0].get_text()
    assert note.startswith(f"unconverged images of {2 * 16} per interval: 25%: {per_interval[0]}")
    assert any(line.get_label() == "loss threshold = 0.01" for line in right.get_lines())


def test_figures_say_what_a_file_lacks_instead_of_crashing():
    bare = make_results(metrics=("cosine",), grid=False).drop_vars("noise")
    for name in ("means", "spreads", "outliers"):
        with pytest.raises(plotting.MissingData, match="zscore metric"):
            plotting.render(bare, name)
    with pytest.raises(plotting.MissingData, match="--save_images"):
        plotting.render(bare, "grid")
    accuracy = plotting.render(bare, "accuracy")
    assert "not in this file" in accuracy.axes[1].texts[0].get_text()
    assert "starting noise not in this file" in plotting.render(bare, "prototypes").get_suptitle()
    plotting.render(bare, "heatmaps")


def test_plot_writes_each_figure_in_each_format(tmp_path, ds):
    path = results.write_results(ds, tmp_path / "run.nc")
    written = toolkit.plot(path, formats="png,pdf", figures="means,grid")  # all: see analyze's test
    folder = tmp_path / "run.figures"
    assert [p.name for p in written] == ["means.png", "means.pdf", "grid.png", "grid.pdf"]
    assert all(p.parent == folder and p.stat().st_size > 1000 for p in written)
    assert (folder / "means.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "means.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.slow
def test_plot_skips_what_a_file_cannot_show_and_says_why(tmp_path):
    bare = make_results(metrics=("cosine",), grid=False)
    skipped = {}
    written = toolkit.plot(bare, out=tmp_path / "figs", on_skip=skipped.__setitem__)
    assert set(skipped) == {"means", "spreads", "outliers", "grid"}
    assert {p.stem for p in written} == {"accuracy", "prototypes", "heatmaps", "convergence"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        toolkit.plot(bare, out=tmp_path / "again", figures="grid")
    assert "figure 'grid' skipped" in str(caught[0].message)


def test_plot_never_replaces_figures_without_overwrite(tmp_path, ds):
    folder = tmp_path / "figs"
    folder.mkdir()
    (folder / "means.png").write_bytes(b"mine")
    with pytest.raises(toolkit.UsageError, match="already holds figures \\(means.png\\); pass --overwrite"):
        toolkit.plot(ds, out=folder)
    assert [p.name for p in folder.iterdir()] == ["means.png"]
    toolkit.plot(ds, out=folder, figures="means", overwrite=True)
    assert (folder / "means.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kwargs, message", [
    (dict(formats="png,gif"), "unknown --format gif; allowed: png, pdf, svg"),
    (dict(figures="means,pie"), "unknown figure pie; allowed: means, spreads"),
    (dict(seed=7), "seed 7 is not in this file; it holds seeds 0, 1"),
    (dict(interval=0.3), "interval 0.3 is not in this file; it holds 0.25, 0.5, 1"),
    (dict(classes=["dog"]), "class 'dog' is not in this file"),
])
def test_bad_choices_are_one_line_errors_and_nothing_is_written(tmp_path, ds, kwargs, message):
    with pytest.raises(toolkit.UsageError, match=message):
        toolkit.plot(ds, out=tmp_path / "figs", **kwargs)
    assert not (tmp_path / "figs").exists()


def test_plot_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(toolkit.UsageError, match="no results file"):
        toolkit.plot(tmp_path / "none.nc")
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(foreign)
    with pytest.raises(toolkit.UsageError, match="not a toolkit results file"):
        toolkit.plot(foreign)
    with pytest.raises(toolkit.UsageError, match="give out="):
        toolkit.plot(make_results(metrics=("cosine",)))


def test_images_round_trip_as_quantised_pixels_in_0_1(tmp_path):
    ds = make_results(intervals=(1.0,), seeds=(0,), n=3, metrics=("cosine",))
    path = results.write_results(ds, tmp_path / "r.nc")
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        assert nc.variables["P"].dtype == np.uint8 and nc.variables["noise"].dtype == np.uint8
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back["P"].load(), ds["P"])
        assert back["P"].dtype == np.float32
        assert float(back["P"].min()) >= 0 and float(back["P"].max()) <= 1
    pixels = np.array([0.0, 0.5, 1 / 255 * 0.49, 1.0, 1.2])
    np.testing.assert_allclose(results.quantize(pixels), [0, 128 / 255, 0, 1, 1], rtol=1e-6)
    assert json.loads(ds.attrs["config"])["save_images"] is None


@pytest.mark.slow
def test_analyze_draws_the_figures_beside_its_results_unless_noplots(tmp_path, capsys, tiny_plugin):
    import torch

    from conftest import TINY_RUN
    from tests.e2e.test_end_to_end import cli_args
    from toolkit.__main__ import main

    out = tmp_path / "tiny.nc"
    assert main(["analyze", *cli_args(TINY_RUN), "--out", str(out), "--noprogress"]) == 0
    folder = tmp_path / "tiny.figures"
    assert f"figures: {folder}/ (8 files)" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{name}.png" for name, spec in plotting.registered_figures().items() if not spec.optional)
    with toolkit.open_results(out) as ds:
        assert json.loads(ds.attrs["config"])["save_images"] is True  # 3 classes: on by default
        assert ds["P"].dims == results.IMAGES["P"] and ds["P"].shape[-3:] == (1, 6, 6)
        diagonal = xr.DataArray(np.arange(3), dims="class")
        xr.testing.assert_equal(ds["prototypes"].drop_vars("class"),
                                ds["P"].isel(k=diagonal, j=diagonal).drop_vars(["k", "j"]))
        # the stored noise is the noise each seed's prototypes started from
        noise = torch.rand((3, 1, 6, 6), generator=torch.Generator().manual_seed(1)).numpy()
        np.testing.assert_array_equal(ds["noise"].sel(seed=1).values, results.quantize(noise))
        assert float(ds["P"].min()) >= 0 and float(ds["P"].max()) <= 1

    bare = tmp_path / "bare.nc"
    argv = ["analyze", *cli_args({**TINY_RUN, "seeds": 1}), "--out", str(bare), "--noprogress",
            "--noplots", "--nosave_images"]
    assert main(argv) == 0
    assert "figures:" not in capsys.readouterr().out
    assert not (tmp_path / "bare.figures").exists()
    with toolkit.open_results(bare) as ds:
        assert "P" not in ds and ds["prototypes"].sizes["class"] == 3
        assert json.loads(ds.attrs["config"])["save_images"] is False


def test_analyze_refuses_existing_figures_before_training(tmp_path, capsys, tiny_plugin, monkeypatch):
    from conftest import TINY_RUN
    from tests.e2e.test_end_to_end import cli_args
    from toolkit.__main__ import main
    from toolkit.stages import train

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "Trainer", no_training)
    (tmp_path / "r.figures").mkdir()
    (tmp_path / "r.figures" / "grid.png").write_bytes(b"mine")
    assert main(["analyze", *cli_args(TINY_RUN), "--out", str(tmp_path / "r.nc"), "--noprogress"]) == 2
    assert "r.figures already holds figures (grid.png); pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "r.figures" / "grid.png").read_bytes() == b"mine"
    assert not (tmp_path / "r.nc").exists()


def test_save_images_must_be_a_boolean():
    with pytest.raises(toolkit.UsageError, match="--save_images must be true or false; got 'maybe'"):
        AnalysisConfig(save_images="maybe")
    assert AnalysisConfig().with_save_images_for(20).save_images is True
    assert AnalysisConfig().with_save_images_for(21).save_images is False
    assert AnalysisConfig(save_images=False).with_save_images_for(3).save_images is False


@pytest.mark.slow
def test_example_draws_a_figure_from_plain_xarray(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = results.write_results(make_results(n=3), tmp_path / "run.nc")
    script = Path(__file__).parents[2] / "examples" / "plot_from_xarray.py"
    run = subprocess.run([sys.executable, str(script), str(path), "1"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"figure: {tmp_path / 'run-prototypes.png'}\n"
    assert (tmp_path / "run-prototypes.png").read_bytes()[:4] == b"\x89PNG"


def test_dollar_signs_in_names_are_drawn_as_text_not_mathtext(tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # text kept as text in svg
    odd = make_results(class_names=["a$\\frac{$", "b$", "$c", "d"])
    odd.attrs.update(model="res$net", dataset="$digits")
    written = toolkit.plot(odd, out=tmp_path / "figs", formats="png,svg")
    assert {p.stem for p in written} >= {"prototypes", "grid", "means"}
    svg = (tmp_path / "figs" / "grid.svg").read_text()
    assert "a$\\frac{$" in svg and "res$net on $digits" in svg
    odd.attrs.update(model="a$\\frac{", dataset="$b")  # the report's quality figure drew it as mathtext
    page = toolkit.report(odd, tmp_path / "odd.html").read_text()
    assert "a$\\frac{ on $b" in page and "data:image/png;base64" in page


def test_figures_are_written_all_or_nothing(tmp_path, ds, monkeypatch):
    calls = []

    def failing(fig, path, dpi):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(fig, path, dpi)

    original = plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", failing)
    with pytest.raises(OSError):
        toolkit.plot(ds, out=tmp_path / "figs", formats="png")
    assert len(calls) == 3
    assert not (tmp_path / "figs").exists() or not list((tmp_path / "figs").iterdir())
    assert [p.name for p in tmp_path.iterdir()] in ([], ["figs"])   # no staging folder left
