"""Each zoo's README shows what its committed summary.json holds, the summary's correlations are
those of its own per-model values (no number typed by hand), and the CIFAR-10 zoo's build-and-score
loop works on a tiny archive of CIFAR's layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import check_readme_block, load_script

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FOLDER = EXAMPLES / "zoo-digits"


@pytest.fixture(scope="module", params=["zoo-digits", "zoo-cifar10"])
def zoo(request):
    return EXAMPLES / request.param


@pytest.fixture(scope="module")
def study(zoo):
    return load_script(zoo / "study.py")


@pytest.fixture(scope="module")
def summary(zoo):
    return json.loads((zoo / "summary.json").read_text())


def test_the_readme_block_is_rendered_from_the_summary(study, summary, zoo):
    check_readme_block(study, zoo, summary)


def test_every_tau_is_that_of_the_per_model_values(study, summary):
    models = summary["models"]
    analyses = [summary["arms"], *([summary["extended"]["arms"]] if "extended" in summary else [])]
    for arm, content in ((arm, c) for arms in analyses for arm, c in arms.items()):
        names = content.get("names", [n for n in models if arm in models[n]])
        accuracy = np.array([models[n]["test_accuracy"] for n in names])
        assert len(names) == content["models"]
        for score, stats in content["scores"].items():
            values = np.array([np.nan if models[n][arm].get(score) is None else models[n][arm][score]
                               for n in names])
            tau = study.kendall_tau_b(study.oriented(values, stats["expected"]), accuracy)
            assert tau == pytest.approx(stats["tau"], abs=1e-12, nan_ok=True), (arm, score)
            assert stats["with_value"] == int(np.isfinite(values).sum())


def test_the_verdict_follows_the_preregistered_rule(summary):
    v = summary["verdict"]
    assert v["score"] == "C_minus_R_converged"
    assert v["criterion_a"] == (v["tau_ci"][0] > 0)
    assert v["criterion_b"] == (v["difference_ci"][0] > 0)
    assert v["claim_holds"] == (v["criterion_a"] and v["criterion_b"])
    main = summary["arms"]["main"]["scores"]
    strength = {b: abs(main[b]["tau"]) if main[b]["expected"] == 0 else main[b]["tau"]
                for b in ("unconverged_fraction", "mean_steps", "noise_confidence", "weight_norm",
                          "ww_alpha")}
    assert v["best_baseline"] == max(strength, key=strength.get)


def test_statistics_agree_with_scipy():
    study = load_script(FOLDER / "study.py")
    from scipy import stats

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 6, 40).astype(float), rng.random(40)
    assert study.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert study.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert study.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert list(study.oriented(np.array([1.0, np.nan, 3.0]), -1)) == [-1.0, -4.0, -3.0]


@pytest.mark.slow
def test_the_cifar10_zoo_builds_scores_and_resumes_model_by_model(tmp_path, monkeypatch):
    """study.py run on a tiny archive of the real one's layout: each model is trained, scored and
    committed as it finishes; the toolkit's test accuracy is the build's; a rerun does nothing."""
    from tests.plugins.test_imagefolder import images, write_zip

    study = load_script(EXAMPLES / "zoo-cifar10" / "study.py")
    archive = write_zip(tmp_path / "tiny-cifar.zip", images(size=16, per_class=(12, 6)),
                        top="tiny-cifar/")
    Recipe = study.build.Recipe
    monkeypatch.setattr(study.build, "ZOO", {"fast-a": ("fast:2", Recipe(epochs=1)),
                                             "mlp-b": ("mlp:8", Recipe(epochs=2, noise=0.5))})
    monkeypatch.setattr(study.build, "TRAINING", {**study.build.TRAINING, "batch_size": 8})
    main = dict(study.ARMS["main"][1], max_steps=3)
    monkeypatch.setattr(study, "ARMS", {"main": (study.ARMS["main"][0], main)})
    for name in ("RESULTS", "SCORES", "MANIFEST"):
        monkeypatch.setattr(study, name, tmp_path / getattr(study, name).name)
    weights = tmp_path / "weights"

    study.run(["main"], weights, archive, None)
    zoo, scores = json.loads(study.MANIFEST.read_text()), json.loads(study.SCORES.read_text())
    assert list(zoo) == list(scores) == ["fast-a", "mlp-b"]
    for name, row in scores.items():
        arm = row["main"]
        assert arm["test_accuracy"] == pytest.approx(zoo[name]["test_accuracy"], abs=1e-6)
        assert arm["expected"]["C_minus_R_converged"] == 1
        assert set(arm["scores"]) >= {"C_minus_R_converged", "unconverged_fraction", "ww_alpha", "Mg"}
        assert arm["precision"] in ("fp32", "bf16") and arm["machine"]
    names, table, expected = study.arm_table("main", zoo, scores, list(study.build.ZOO))
    assert names == ["fast-a", "mlp-b"] and len(table["C_mean"]) == 2

    ranked = []
    monkeypatch.setattr("toolkit.ranking.rank", lambda *a, **k: ranked.append(a))
    study.run(["main"], weights, archive, None)  # everything is there: no training, no ranking
    assert ranked == [] and json.loads(study.SCORES.read_text()) == scores


def test_the_poster_claims_on_strong_models_are_rendered_from_the_cifar10_summary():
    folder = EXAMPLES / "zoo-cifar10"
    study = load_script(folder / "study.py")
    summary = json.loads((folder / "summary.json").read_text())
    for readme in (folder / "README.md", study.REPLICATION):
        found = study.CLAIMS.search(readme.read_text())
        assert found is not None, f"{readme} lacks the strong-models markers"
        assert found.group(2).strip() == study.render_claims(summary).strip(), readme


def test_the_cifar10_zoo_tests_the_digits_candidate_and_primary_unchanged():
    study = load_script(EXAMPLES / "zoo-cifar10" / "study.py")
    digits = json.loads((FOLDER / "summary.json").read_text())
    assert study.DIGITS_CHOSEN == digits["out_of_sample"]["chosen"]
    assert study.PRIMARY == digits["verdict"]["score"]
    assert study.digits.BASELINES == ("unconverged_fraction", "mean_steps", "noise_confidence",
                                      "weight_norm", "ww_alpha")


def test_the_cifar10_summary_holds_the_committed_rows():
    """summary.json is that of scores.json and zoo.json (rerun study.py analyze after scoring)."""
    folder = EXAMPLES / "zoo-cifar10"
    summary = json.loads((folder / "summary.json").read_text())
    scores = json.loads((folder / "scores.json").read_text())
    zoo = json.loads((folder / "zoo.json").read_text())
    assert set(summary["models"]) == {n for n in zoo if "main" in scores.get(n, {})}
    study = load_script(folder / "study.py")
    record = [n for n in study.build.PREREGISTERED if "main" in scores.get(n, {})]
    assert summary["arms"]["main"]["names"] == record
    assert summary["interim"] == (len(record) < summary["zoo_size"] == 14)
    if "extended" in summary:
        assert summary["extended"]["arms"]["main"]["names"] == list(summary["models"])
    for name, model in summary["models"].items():
        assert model["test_accuracy"] == zoo[name]["test_accuracy"]
        for arm in summary["arms"]:
            assert model[arm] == scores[name][arm]["scores"], (name, arm)
            assert scores[name][arm]["test_accuracy"] == pytest.approx(zoo[name]["test_accuracy"], abs=1e-6)


def test_the_amendments_models_leave_the_analysis_of_record_alone(tmp_path, monkeypatch):
    """PREREGISTRATION.md, amendment 1: models scored after the 14 of record are analysed with them
    under ``extended`` only; the verdict and every statistic of record stay those of the 14."""
    study = load_script(EXAMPLES / "zoo-cifar10" / "study.py")
    zoo = json.loads(study.MANIFEST.read_text())
    scores = json.loads(study.SCORES.read_text())
    record = {n: zoo[n] for n in study.build.PREREGISTERED}
    for name in ("SCORES", "MANIFEST"):
        monkeypatch.setattr(study, name, tmp_path / getattr(study, name).name)
    study.write(study.MANIFEST, record)
    study.write(study.SCORES, {n: scores[n] for n in record})
    alone = study.analyse(["main"])
    assert "extended" not in alone and list(alone["models"]) == list(record)

    added = next(n for n in study.build.ZOO if n not in record)
    zoo = {**record, added: {**record["fast64-base-s0"], "test_accuracy": 0.99}}
    moved = {arm: {**row, "test_accuracy": 0.99} for arm, row in scores["fast64-base-s0"].items()}
    study.write(study.MANIFEST, zoo)
    study.write(study.SCORES, {**{n: scores[n] for n in record}, added: moved})
    both = study.analyse(["main"])
    same = lambda part: json.dumps(part, sort_keys=True, default=str)  # noqa: E731 (NaN == NaN)
    assert same(both["verdict"]) == same(alone["verdict"]) and same(both["arms"]) == same(alone["arms"])
    assert both["extended"]["arms"]["main"]["names"] == [*record, added]
    assert both["models"][added]["preregistered"] is False
    block = study.render(both)
    assert block.index("### Amendment 1") > block.index(f"over {len(record)} models")
    assert f"{added} (amendment 1)" in block


def test_the_digits_replication_block_is_rendered_from_its_summaries():
    study = load_script(FOLDER / "study.py")
    record = json.loads((FOLDER / "summary.json").read_text())
    again = json.loads((study.REPLICATION / "summary.json").read_text())
    timing = json.loads((study.REPLICATION / "timing.json").read_text())
    found = study.REPLICATION_BLOCK.search((FOLDER / "README.md").read_text())
    assert found is not None, "examples/zoo-digits/README.md lacks the replication markers"
    assert found.group(2).strip() == study.render_replication(record, again, timing).strip()
    assert again["arms"]["main"]["models"] == record["arms"]["main"]["models"] == 48
    assert set(json.loads((study.REPLICATION / "zoo.json").read_text())) == set(
        json.loads((FOLDER / "zoo.json").read_text()))  # the same 48 recipes, rebuilt
