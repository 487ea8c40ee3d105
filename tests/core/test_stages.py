"""The pipeline as stages: every run has a work directory, a temporary one without ``out``."""
from __future__ import annotations

import tempfile

import pytest

import toolkit
from conftest import TINY_RUN
from toolkit.workdir import WorkDir

RUN = {**TINY_RUN, "intervals": (1.0,), "seeds": 1}


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """The folder temporary work directories go in, for this test alone."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_a_run_without_out_works_in_a_temporary_directory_then_removes_it(temp_root, tiny_plugin,
                                                                         monkeypatch):
    saved = []
    real = WorkDir.save_unit

    def watched(self, *args, **kwargs):
        saved.append(self.path)
        real(self, *args, **kwargs)

    monkeypatch.setattr(WorkDir, "save_unit", watched)
    ds = toolkit.analyze(**RUN)
    assert saved and all(path.parent == temp_root for path in saved)
    assert list(temp_root.glob("toolkit-work-*")) == []
    assert ds["features"].sizes["seed"] == 1


@pytest.mark.slow
def test_the_temporary_directory_goes_on_error_too(temp_root, tiny_plugin, monkeypatch):
    from toolkit.stages import features

    def broken(*args, **kwargs):
        assert any(temp_root.glob("toolkit-work-*/protos-*.npz"))  # the prototypes were saved there
        raise RuntimeError("broken")

    monkeypatch.setattr(features, "extract_features", broken)
    with pytest.raises(RuntimeError, match="broken"):
        toolkit.analyze(**RUN)
    assert list(temp_root.glob("toolkit-work-*")) == []


def test_bad_input_makes_no_temporary_directory(temp_root, tiny_plugin):
    with pytest.raises(toolkit.UsageError):
        toolkit.analyze(**{**RUN, "metrics": "zscore,cosine"})
    assert list(temp_root.glob("toolkit-work-*")) == []
