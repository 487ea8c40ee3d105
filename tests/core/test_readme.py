"""The README's plugin snippet works as shown: registered through the hooks, it adds its variable
with the attributes a results file needs, and no warning."""
from __future__ import annotations

import re
import types
import warnings
from pathlib import Path

import toolkit
from toolkit import results
from toolkit.plugins import get_plugin_manager
from tests.core.test_plotting import make_results

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_the_readmes_plugin_snippet_adds_its_metric_without_a_warning(tmp_path):
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", README, re.S)
                  if "register_metrics" in block]
    module = types.ModuleType("my_plugin")
    exec(compile(snippet, "README.md", "exec"), module.__dict__)
    source = results.write_results(make_results(), tmp_path / "run.nc")
    get_plugin_manager().register(module, name="my_plugin")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = toolkit.remeasure(source, metrics="cosine,zscore,gap", out=tmp_path / "gap.nc")
    finally:
        get_plugin_manager().unregister(name="my_plugin")
    assert ds["gap"].attrs["long_name"] == "mean C minus mean R"
    assert (ds["gap"] == ds["C_mean"] - ds["R_mean"]).all()
