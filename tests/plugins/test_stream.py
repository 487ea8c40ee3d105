"""C and R streamed into the results file block by block (``--metrics cosine_summaries --save C,R``):
the same values as ``cosine``'s in-memory tensors, without ever holding a whole tensor."""
import tracemalloc

import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit import results
from toolkit_plugins.metrics import cosine, stream_cosine


def made_up(n, intervals=2, seeds=3, features=5, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(intervals, seeds, n, n, features)).astype(np.float32)
    values[0, 0, 1, 2] = 0.0  # a zero feature vector: no direction, d = 1 to everything
    ds = results.dataset_from_features(values)
    ds.attrs.update(results.provenance("{}"))
    return ds


@pytest.mark.parametrize("chunk_values", [1, 7 * 7 * 3, 1 << 20])  # 1 plane, 3 planes, all
def test_streamed_file_equals_the_in_memory_one(tmp_path, monkeypatch, chunk_values):
    monkeypatch.setattr(results, "CHUNK_VALUES", chunk_values)
    ds = made_up(7)
    results.write_results(ds.assign(cosine(ds)), tmp_path / "memory.nc")
    results.write_results(ds, tmp_path / "stream.nc", streamed=stream_cosine(ds))
    with toolkit.open_results(tmp_path / "memory.nc") as memory, \
            toolkit.open_results(tmp_path / "stream.nc") as stream:
        xr.testing.assert_identical(stream.load(), memory.load())  # values, dims, coords, attrs
        width = min(7, max(1, chunk_values // 49))
        assert stream.C.encoding["chunksizes"] == (1, 1, 7, width, 7)  # whole (k, i) planes
        assert stream.R.encoding["chunksizes"] == (1, 1, width, 7, 7)  # whole (j, i) planes
        assert stream.C.encoding["zlib"] and stream.C.dtype == np.float32


def test_the_writer_asks_for_blocks_never_the_whole_tensor(tmp_path, monkeypatch):
    n = 12
    monkeypatch.setattr(results, "CHUNK_VALUES", 2 * n * n)
    ds = made_up(n, intervals=1, seeds=2)
    asked = []

    def recorded(variable):
        def block(t, s, start, stop):
            values = variable.block(t, s, start, stop)
            asked.append((t, s, start, stop, values.shape))
            return values
        return results.Streamed(variable.along, block, variable.attrs)

    streamed = {name: recorded(v) for name, v in stream_cosine(ds).items()}
    results.write_results(ds, tmp_path / "stream.nc", streamed=streamed)
    assert max(stop - start for _, _, start, stop, _ in asked) == 2
    assert {shape for *_, shape in asked} == {(n, 2, n), (2, n, n)}   # C cut along j, R along k
    # every (seed, slab) asked for once per variable: 2 seeds x 6 slabs x (C and R)
    assert len(asked) == len(set(asked)) == 2 * (n // 2) * 2
    with toolkit.open_results(tmp_path / "stream.nc") as stream:
        xr.testing.assert_identical(stream.C.load(), cosine(ds)["C"].rename("C"))


def test_streaming_peak_memory_is_a_block_not_the_tensor(tmp_path, monkeypatch):
    """tracemalloc (numpy reports its buffers to it) while writing n = 64: streamed, the peak is
    far below one float32 n^3 tensor; in memory, ``cosine`` alone needs several float64 ones."""
    n = 64
    monkeypatch.setattr(results, "CHUNK_VALUES", n * n)  # one (k, i) or (j, i) plane per block
    ds = made_up(n, intervals=1, seeds=1, features=4)
    tensor = n ** 3 * 4  # bytes of one float32 C

    tracemalloc.start()
    try:
        results.write_results(ds, tmp_path / "stream.nc", streamed=stream_cosine(ds))
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        cosine(ds)
        in_memory_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert in_memory_peak > 4 * tensor       # C and R in float64, then float32: the measure works
    assert streamed_peak < tensor / 4


def test_a_failure_while_streaming_leaves_no_file(tmp_path):
    ds = made_up(5)
    calls = []

    def failing(t, s, start, stop):
        calls.append(start)
        if len(calls) > 2:
            raise ValueError("disk gone")
        return stream_cosine(ds)["C"].block(t, s, start, stop)

    with pytest.raises(ValueError, match="disk gone"):
        results.write_results(ds, tmp_path / "stream.nc",
                              streamed={"C": results.Streamed("j", failing, {})})
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary one


def test_the_boundary_grid_streams_bc_and_br_too(tmp_path):
    ds = made_up(5)
    ds["B_features"] = ds["features"] * -1.5 + 0.25   # any other grid of features
    streamed = stream_cosine(ds)
    assert sorted(streamed) == ["BC", "BR", "C", "R"]
    results.write_results(ds.assign(cosine(ds)), tmp_path / "memory.nc")
    results.write_results(ds, tmp_path / "stream.nc", streamed=streamed)
    with toolkit.open_results(tmp_path / "memory.nc") as memory, \
            toolkit.open_results(tmp_path / "stream.nc") as stream:
        xr.testing.assert_identical(stream.load(), memory.load())


def test_a_boundary_run_keeps_only_what_save_names_streamed(tmp_path, tiny_plugin):
    run = {"model": "tiny-cnn", "dataset": "tiny", "intervals": (1.0,), "seeds": 1, "epochs": 25,
           "train_lr": 0.1, "train_batch_size": 16, "max_steps": 30, "batch_size": 4,
           "synthesizer": "boundary"}
    kept = toolkit.analyze(out=tmp_path / "s.nc", metrics="cosine_summaries", save="BC,BR", **run)
    whole = toolkit.analyze(metrics="cosine,zscore", **run)
    assert {"BC", "BR"} <= set(kept.data_vars) and not {"C", "R"} & set(kept.data_vars)
    for name in ("BC", "BR", "BC_mean", "C_std"):
        xr.testing.assert_allclose(kept[name].load(), whole[name], rtol=1e-12)
