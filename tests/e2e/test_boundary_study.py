"""A whole tiny study with the boundary synthesizer and the mg and madv metrics, to a file and back."""
import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit import results, schema
from toolkit_plugins.boundary import BOUNDARY
from toolkit_plugins.scores import ADVERSARIAL
from conftest import TINY_RUN

pytestmark = pytest.mark.slow

RUN = dict(TINY_RUN, synthesizer="boundary", metrics=("cosine", "zscore", "mg", "madv"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from toolkit.plugins import get_plugin_manager
    from conftest import TinyPlugin

    manager = get_plugin_manager()
    plugin = TinyPlugin()
    manager.register(plugin, name="tiny-boundary-study")
    try:
        folder = tmp_path_factory.mktemp("boundary")
        out = folder / "tiny.nc"
        ds = toolkit.analyze(out=out, **RUN)
        yield ds, out
    finally:
        manager.unregister(plugin)


def test_the_file_holds_B_its_records_BC_BR_Mg_and_Madv(study):
    ds, out = study
    with results.open_results(out) as saved:
        declared = {name: d.variable.dims for name, d in schema.declared().items()
                    if d.plugin in ("toolkit_plugins.boundary", "toolkit_plugins.scores")}
        assert {"B", "B_features", "BC", "BR_outlier_fraction", "Mg_seed", "Madv",
                "adversarial_features"} <= set(declared)
        for name, dims in declared.items():
            assert saved[name].dims == dims, name
        xr.testing.assert_allclose(saved["BC"], ds["BC"])
        assert saved["B"].encoding["dtype"] == np.uint8
    n = ds.sizes["k"]
    off = ~np.eye(n, dtype=bool)
    assert ds["boundary_success"].values[..., off].all()
    assert (ds["boundary_gap"].values[..., off] < 0.01).all()
    assert np.isnan(ds["boundary_gap"].values[..., ~off]).all()
    # the diagonal of B is the class prototype, as in P
    diagonal = np.arange(n)
    np.testing.assert_array_equal(ds["B"].values[:, :, diagonal, diagonal], ds["prototypes"].values)
    # an adversarial example is classified otherwise than its prototype
    assert (ds["adversarial_class"].values != np.arange(n)).all()
    assert ((ds["Madv"] > 0) & (ds["Madv"] < 2)).all() and ((ds["Mg"] > 0) & (ds["Mg"] < 2)).all()
    # the boundary search and the attack are timed apart from the grids' synthesis
    assert ds.attrs["time_probes_s"] > 0 and "probes" in toolkit.summary(ds).splitlines()[-1]


def test_the_boundary_figure_and_the_reports_quality_section(study, tmp_path):
    ds, out = study
    written = toolkit.plot(out, tmp_path / "figures", figures="boundary")
    assert [p.name for p in written] == ["boundary.png"]
    from toolkit.plotting import render
    assert "tiny-cnn on tiny, 2 seeds (0-1)" in render(ds, "boundary").get_suptitle()
    from toolkit.reporting import quality_section
    section = "\n".join(quality_section([("tiny.nc", ds)]))
    assert 'id="quality"' in section and "<td data-column=\"score\">Madv</td>" in section
    assert "data:image/png;base64," in section


def test_a_run_without_B_skips_the_boundary_figure_silently_unless_asked(tmp_path):
    ds = results.dataset_from_features(np.random.default_rng(0).random((2, 1, 3, 3, 4)))
    from toolkit_plugins.metrics import cosine, zscore
    ds = ds.assign(cosine(ds))
    ds = ds.assign(zscore(ds)).assign_attrs(model="m", dataset="d", toolkit_schema_version=1)
    skipped = []
    written = toolkit.plot(ds, tmp_path / "g", on_skip=lambda name, why: skipped.append(name))
    assert "boundary" not in skipped and "boundary.png" not in [p.name for p in written]
    with pytest.warns(UserWarning, match="figure 'boundary' skipped"):
        toolkit.plot(ds, tmp_path / "h", figures="boundary")


def test_resumed_units_keep_what_the_probes_found(tmp_path, study):  # study: the tiny plugin
    work = tmp_path / "work"
    first = toolkit.analyze(work_dir=work, **RUN)     # no out: the units stay
    again = toolkit.analyze(work_dir=work, **RUN)     # everything resumed
    for name in (*BOUNDARY, *ADVERSARIAL, "Madv", "BC"):
        xr.testing.assert_identical(first[name], again[name])
