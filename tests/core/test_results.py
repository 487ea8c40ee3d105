"""The results file: round trip, validation, atomic and no-clobber writes."""
import os

import numpy as np
import pytest
import xarray as xr
from xarray.testing import assert_identical

import toolkit
from toolkit import results
from toolkit_plugins.metrics import cosine, zscore
from tests.plugins.test_metrics import features_dataset


@pytest.fixture
def complete():
    rng = np.random.default_rng(0)
    ds = features_dataset(rng.random((2, 2, 3, 3, 4)).astype(np.float32))
    ds = ds.assign(cosine(ds))
    ds = ds.assign(zscore(ds))
    ds.attrs.update(results.provenance('{"model": "x"}', model="x", dataset="y"))
    return ds


def test_netcdf_round_trip_is_identical(tmp_path, complete):
    path = results.write_results(complete, tmp_path / "r.nc")
    with xr.open_dataset(path) as back:
        assert_identical(back.load(), complete)
    with toolkit.open_results(path) as back:
        assert list(back["class_name"].values) == ["0", "1", "2"]
        assert back["converged"].dtype == bool
        assert back.attrs["toolkit_schema_version"] == results.SCHEMA_VERSION


def test_every_variable_of_the_schema_is_present(complete):
    results.validate(complete)
    for name, dims in {**results.REQUIRED, **results.FROM_METRICS}.items():
        assert complete[name].dims == dims


def test_numbers_are_compressed(tmp_path, complete):
    path = results.write_results(complete, tmp_path / "r.nc")
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        assert nc.variables["C"].filters()["zlib"]
        assert nc.variables["features"].filters()["zlib"]


def test_existing_file_is_kept_unless_overwrite(tmp_path, complete):
    path = tmp_path / "r.nc"
    path.write_text("precious")
    with pytest.raises(toolkit.UsageError, match="already exists; pass --overwrite"):
        results.write_results(complete, path)
    assert path.read_text() == "precious"
    results.write_results(complete, path, overwrite=True)
    assert toolkit.open_results(path).sizes["k"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]  # no temporary left behind


def test_failed_write_leaves_nothing_behind(tmp_path, complete):
    broken = complete.assign(bad=("x", np.array([object()], dtype=object)))
    with pytest.raises(Exception):
        results.write_results(broken, tmp_path / "r.nc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mutate, message", [
    (lambda ds: ds.drop_vars("steps"), "lacks variable 'steps'"),
    (lambda ds: ds.assign(C_mean=ds.C_seed_mean), "'C_mean' has dims \\('interval', 'seed'\\)"),
    (lambda ds: ds.assign_attrs(toolkit_schema_version=99), "schema version 99"),
    (lambda ds: ds.assign_attrs(toolkit_schema_version=None), "not a toolkit results file"),
])
def test_open_results_refuses_foreign_or_incomplete_files(tmp_path, complete, mutate, message):
    path = tmp_path / "bad.nc"
    ds = mutate(complete)
    ds.attrs = {k: v for k, v in ds.attrs.items() if v is not None}
    ds.to_netcdf(path)
    with pytest.raises(toolkit.UsageError, match=message):
        toolkit.open_results(path)


def test_open_results_on_a_non_netcdf_file(tmp_path):
    path = tmp_path / "x.nc"
    path.write_text("not netcdf")
    with pytest.raises(toolkit.UsageError, match="not a readable netCDF file"):
        toolkit.open_results(path)
    with pytest.raises(toolkit.UsageError, match="no results file"):
        toolkit.open_results(tmp_path / "missing.nc")


@pytest.mark.parametrize("name, message", [
    ("missing/r.nc", "does not exist"),
    ("r.txt", "must name a .nc file"),
])
def test_check_writable(tmp_path, name, message):
    with pytest.raises(toolkit.UsageError, match=message):
        results.check_writable(tmp_path / name)
    assert not os.path.exists(tmp_path / "missing")


def test_results_file_is_readable_by_others(tmp_path, complete):
    path = results.write_results(complete, tmp_path / "r.nc")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_filesystems_without_hard_links_still_get_the_file(tmp_path, complete, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    path = results.write_results(complete, tmp_path / "r.nc")
    assert toolkit.open_results(path).sizes["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]


def test_the_results_file_reference_is_generated_from_the_schema_and_up_to_date(monkeypatch):
    from pathlib import Path

    from toolkit import schemadocs
    from toolkit.testing import fresh_plugin_manager

    monkeypatch.setenv("TOOLKIT_LOAD_ENTRYPOINTS", "0")  # the built-in plugins only
    monkeypatch.delenv("TOOLKIT_PLUGINS", raising=False)
    monkeypatch.delenv("TOOLKIT_DISABLE_PLUGINS", raising=False)
    page = (Path(__file__).resolve().parents[2] / "docs" / "results-file.md").read_text(encoding="utf-8")
    with fresh_plugin_manager():
        assert page == schemadocs.render(), ("docs/results-file.md is stale: TOOLKIT_LOAD_ENTRYPOINTS=0 "
                                             "python -m toolkit.schemadocs docs/results-file.md")
    for name in ("features", "BC", "B_features", "Madv", "adversarial_features", "C_mean"):
        assert f"| `{name}`" in page, name


def test_validate_checks_the_dims_plugins_declare_and_accepts_undeclared_variables(complete):
    import pytest

    bad = complete.assign(C_mean=complete["C_mean"].expand_dims(extra=1))
    with pytest.raises(toolkit.UsageError, match="variable 'C_mean' has dims"):
        results.validate(bad)
    results.validate(complete.assign(from_an_absent_plugin=complete["C_mean"].expand_dims(extra=1)))


def test_a_file_declaring_huge_dimensions_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    import netCDF4

    path = tmp_path / "hostile.nc"
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("interval", 1), ("seed", 1), ("k", 100_000), ("j", 100_000), ("i", 100_000)):
            nc.createDimension(name, size)
        nc.createVariable("C", "f4", ("interval", "seed", "k", "j", "i"), chunksizes=(1, 1, 10, 10, 10))
        nc.toolkit_schema_version = 1
    assert path.stat().st_size < 1_000_000
    for command in (toolkit.quality, toolkit.plot, toolkit.open_results):  # they read C
        with pytest.raises(toolkit.UsageError, match="declares 4,000,000,000,000,000 bytes.*"
                                                     "TOOLKIT_MAX_RESULTS_BYTES"):
            command(str(path))
    with pytest.raises(toolkit.UsageError, match="lacks variable 'features'"):
        toolkit.summary(str(path))  # which reads no C: refused as no results file, nothing read
    monkeypatch.setenv("TOOLKIT_MAX_RESULTS_BYTES", "lots")
    with pytest.raises(toolkit.UsageError, match="TOOLKIT_MAX_RESULTS_BYTES='lots' must be a whole number"):
        toolkit.summary(str(path))


def test_the_summary_head_counts_in_words():
    from toolkit.results import dataset_from_features
    from toolkit.table import summary_table

    one = dataset_from_features(np.random.default_rng(0).random((1, 1, 3, 3, 4)))
    assert "3 classes, 1 seed," in summary_table(one).splitlines()[0]


def test_a_huge_dimension_coordinate_is_refused_before_xarray_reads_it(tmp_path, monkeypatch):
    """xarray reads dimension coordinates when it opens a file: a file of 800 bytes declaring
    3e9 of them made it allocate 22 GiB (MemoryError) before any check."""
    import netCDF4

    def opened(*args, **kwargs):
        raise AssertionError("xarray opened the file before its sizes were checked")

    monkeypatch.setattr(xr, "open_dataset", opened)

    path = tmp_path / "hostile.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("k", 3_000_000_000)
        nc.createVariable("k", "f8", ("k",), chunksizes=(1000,))
        nc.toolkit_schema_version = 1
    for command in (toolkit.summary, toolkit.quality, toolkit.plot, toolkit.open_results):
        with pytest.raises(toolkit.UsageError, match="declares 24,000,000,000 bytes"):
            command(str(path))


def test_summary_and_quality_read_only_their_variables(tmp_path, monkeypatch):
    """A file whose features are over the limit still gives its summary and quality (they read only
    the summary variables and the scores' inputs); plot, which draws the features, is refused."""
    from toolkit.table import summary_variables

    ds = features_dataset(np.random.default_rng(0).random((2, 2, 3, 3, 256)))
    ds = ds.assign(cosine(ds)).assign(zscore(ds.assign(cosine(ds))))
    ds.attrs.update(results.provenance('{"model": "x"}', model="x", dataset="y"))
    path = results.write_results(ds, tmp_path / "big.nc")
    features = results.declared(path, ["features"])[0]  # and the dimension coordinates
    assert results.declared(path, summary_variables())[0] < features // 4
    monkeypatch.setenv("TOOLKIT_MAX_RESULTS_BYTES", str(features))  # summary, quality: enough; plot: not
    assert toolkit.summary(str(path)) == toolkit.summary(ds)
    from_file, in_memory = toolkit.quality([str(path)]), toolkit.quality([ds])
    assert from_file.points.keys() == in_memory.points.keys() and from_file.points
    for score, by_label in from_file.points.items():
        (values, accuracy), = by_label.values()
        (expected_values, expected_accuracy), = in_memory.points[score].values()
        np.testing.assert_array_equal(values, expected_values)
        np.testing.assert_array_equal(accuracy, expected_accuracy)
    with pytest.raises(toolkit.UsageError, match="over the limit"):
        toolkit.plot(str(path), tmp_path / "figures")


def test_unwritten_strings_count_as_the_fill_value_they_read_back_as(tmp_path, monkeypatch):
    """A 6 KB file whose 100,000 unwritten class names each read back as a 1,000-character fill
    value made xarray take 600 MB; they were counted as 8 bytes each."""
    import netCDF4

    path = tmp_path / "strings.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("k", 100_000)
        nc.createVariable("k", str, ("k",), fill_value="x" * 1000)
        nc.toolkit_schema_version = 1
    assert path.stat().st_size < 100_000
    assert results.declared(path)[0] >= 100_000 * 1000
    monkeypatch.setenv("TOOLKIT_MAX_RESULTS_BYTES", str(50 * 2**20))
    with pytest.raises(toolkit.UsageError, match="over the limit of 52,428,800"):
        toolkit.summary(str(path))
