"""The HTML report: self-contained, complete, side by side; and opened in a real headless browser."""
import base64
import os
import re
import shutil

import numpy as np
import pytest

import toolkit
from toolkit import plotting, reporting, results
from toolkit.__main__ import main
from toolkit.table import columns
from tests.core.test_plotting import make_results


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two results files to compare: a complete one, and a colour run without zscore or grid P."""
    folder = tmp_path_factory.mktemp("runs")
    full = results.write_results(make_results(), folder / "full.nc")
    other = make_results(intervals=(0.5, 1.0), seeds=(3,), n=3, channels=3, grid=False,
                         metrics=("cosine",))
    other.attrs.update(model="timm:vit_tiny", dataset="cifar10")
    partial = results.write_results(other, folder / "partial.nc")
    return full, partial


@pytest.fixture(scope="module")
def page(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report.html"
    toolkit.report(list(files), out)
    return out


def expected_cells(path):
    """The summary table's numbers, straight from the file's variables."""
    with toolkit.open_results(path) as ds:
        rows = []
        for t in range(ds.sizes["interval"]):
            at = ds.isel(interval=t)
            values = {"interval": float(at["interval"]), "test_acc": float(at["test_accuracy"]),
                      "converged": float(at["converged"].mean()), "steps": float(at["steps"].mean()),
                      "images": float(at["converged"].size)}
            for column, (variable, _) in columns().items():
                if column not in values:
                    values[column] = float(at[variable]) if variable in ds else None
            rows.append({c: "-" if v is None else columns()[c][1].format(v) for c, v in values.items()})
        return rows


@pytest.mark.slow
def test_report_is_one_self_contained_page(page):
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and "http://" not in text and "https://" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_config_summary_convergence_and_every_figure_with_how_to_read(page, files):
    text = page.read_text()
    for spec in plotting.registered_figures().values():
        if spec.optional:  # the boundary grid: neither run has one
            assert f"<h2>{spec.heading}</h2>" not in text
            continue
        assert f"<h2>{spec.heading}</h2>" in text
        assert reporting._e(spec.how_to_read) in text
    assert '<section id="convergence-statistics">' in text
    assert "<th>loss_threshold</th><td>0.01</td>" in text  # the configuration, from the file
    # 8 figures of the full run; the partial one lacks means, spreads, outliers and grid; and the
    # quality section's figure
    assert len(re.findall(r"<img ", text)) == 8 + 4 + 1
    assert text.count('class="missing"') == 4
    assert "partial.nc: not drawn, this file lacks C_mean" in text
    assert "--runs: 2" in text  # two columns, side by side


def test_summary_and_convergence_tables_hold_the_files_numbers(page, files):
    text = page.read_text()
    # one table for every run, a group of rows each, so the columns line up to compare
    (table,) = re.findall(r'<table class="summary">(.*?)</table>', text, re.S)
    groups = re.findall(r'<tbody data-run="([^"]*)">(.*?)</tbody>', table, re.S)
    assert [label for label, _ in groups] == [path.name for path in files]
    for (_, group), path in zip(groups, files):
        shown = [dict(re.findall(r'<td data-column="(\w+)"[^>]*>([^<]*)</td>', row))
                 for row in re.findall(r"<tr>(<td.*?)</tr>", group)]
        assert shown == expected_cells(path)
    assert "self-pairs" in groups[0][1]  # each group is headed by its run's note
    with toolkit.open_results(files[0]) as ds:
        unconverged = int((~ds["converged"].isel(interval=0)).sum())
    first = re.search(r'<table class="convergence">.*?<td data-column="unconverged">(\d+)</td>', text, re.S)
    assert int(first.group(1)) == unconverged


def test_report_refuses_bad_input_in_one_line(tmp_path, files, capsys):
    existing = tmp_path / "mine.html"
    existing.write_text("mine")
    cases = [
        (["report", str(files[0]), "--out", str(existing)], "already exists; pass --overwrite"),
        (["report", str(files[0]), "--out", str(tmp_path / "r.txt")], "--out must name an .html file"),
        (["report", str(tmp_path / "none.nc"), "--out", str(tmp_path / "r.html")], "no results file"),
        (["report"], "report needs at least one results file"),
        (["plot", str(files[0]), "--format", "gif"], "unknown --format gif; allowed: png, pdf, svg"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("toolkit: error: ") and err.count("\n") == 1 and message in err, argv
    assert existing.read_text() == "mine"
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.txt").exists()


@pytest.mark.slow
def test_cli_report_and_plot(tmp_path, files, capsys):
    out = tmp_path / "one.html"
    assert main(["report", str(files[1]), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"report: {out}\n"
    assert "--runs: 1" in out.read_text()
    assert main(["plot", str(files[1]), "--out", str(tmp_path / "figs"), "--format", "png,svg"]) == 0
    shown = capsys.readouterr()
    assert len(shown.out.splitlines()) == 2 * 4
    skipped = shown.err.splitlines()  # the command line prints each warning as one line
    assert len(skipped) == 4 and skipped[-1] == ("toolkit: warning: figure 'grid' skipped: this file "
                                                 "lacks P; rerun analyze with --save_images (on by "
                                                 "default for up to 20 classes)")


# ---- the page in a real browser -------------------------------------------------------------

BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--window-size=1400,1000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's headless chromium, driven by its chromedriver through selenium (all offline)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        why = ("Debian's chromium and chromium-driver are not installed; `make test` installs them "
               "when run as root")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()


def open_page(browser, path):
    """Load ``path`` and let it settle; return (console errors, [(complete, naturalWidth)] of
    every <img>)."""
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(path.resolve().as_uri())
    # a busy machine may still be decoding images after the load event
    WebDriverWait(browser, 60).until(lambda b: b.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete);"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
    return errors, images


def test_the_browser_check_catches_a_broken_page(browser, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                      '<img src="data:image/png;base64,AAAA"><script>console.error("boom")</script>'
                      "</body></html>")
    errors, images = open_page(browser, broken)
    assert any("boom" in entry["message"] for entry in errors)
    assert images == [[True, 0]]


@pytest.mark.slow
def test_report_in_headless_chromium(browser, page, files, tmp_path):
    errors, images = open_page(browser, page)
    assert errors == []
    assert len(images) == 8 + 4 + 1  # the figures of both runs and the quality section's
    assert all(complete and width > 0 for complete, width in images)
    shown = browser.execute_script("""
        return Array.from(document.querySelectorAll('#summary table.summary tbody')).map(group =>
            Array.from(group.rows).filter(row => !row.classList.contains('group')).map(row =>
                Object.fromEntries(Array.from(row.cells).map(cell =>
                    [cell.dataset.column, cell.textContent]))));""")
    assert shown == [expected_cells(path) for path in files]
    # side by side: the two runs' first figures sit next to each other, not one under the other
    boxes = browser.execute_script("""
        return Array.from(document.querySelectorAll('#figure-accuracy img'))
            .map(i => { const r = i.getBoundingClientRect(); return [r.left, r.top, r.width]; });""")
    assert len(boxes) == 2 and boxes[1][0] >= boxes[0][0] + boxes[0][2] and boxes[0][2] > 300
    # on a 1280 px screen nothing needs scrolling sideways: no table is wider than its box
    browser.set_window_size(1280, 1000)
    overflowing = browser.execute_script("""
        return Array.from(document.querySelectorAll('.run, .wide, table')).filter(box =>
            box.scrollWidth > box.clientWidth + 1 || box.getBoundingClientRect().right >
            document.documentElement.clientWidth).map(box => box.className + " in " + box.closest("section").id + " " + box.scrollWidth + ">" + box.clientWidth);""")
    assert overflowing == []
    browser.set_window_size(1400, 1000)
    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 1000
    assert np.std(pixels[..., :3]) > 0.05  # text and figures, not a blank page
    if os.environ.get("TOOLKIT_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["TOOLKIT_KEEP_SCREENSHOT"])


def test_report_plot_and_quality_create_a_missing_output_folder(files, tmp_path):
    # as analyze does: a new user's --out results/run.html need not exist beforehand
    page = toolkit.report(files[1], tmp_path / "new" / "deep" / "r.html")
    assert page.is_file() and page.read_text().startswith("<!DOCTYPE html>")
    drawn = toolkit.plot(files[1], tmp_path / "other" / "figs", figures=["accuracy"])
    assert [p.name for p in drawn] == ["accuracy.png"] and drawn[0].parent == tmp_path / "other" / "figs"
    toolkit.quality(files[0], tmp_path / "third" / "q.png")
    assert (tmp_path / "third" / "q.png").stat().st_size > 0
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    for call in (lambda: toolkit.plot(files[1], blocker / "sub" / "figs"),
                 lambda: toolkit.report(files[1], blocker / "sub" / "r.html"),
                 lambda: toolkit.quality(files[0], blocker / "sub" / "q.png")):
        with pytest.raises(toolkit.UsageError, match="cannot be created: .*a-file' is not a folder"):
            call()
    assert blocker.read_text() == "mine"


def test_a_failed_figure_leaves_no_folder_it_created(files, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the renderer broke")

    monkeypatch.setattr(plotting, "save_figure", broken)
    with pytest.raises(RuntimeError, match="the renderer broke"):
        toolkit.plot(files[1], tmp_path / "new" / "deeper" / "figs", figures=["accuracy"])
    assert list(tmp_path.iterdir()) == []
