"""The draw-a-digit page (`make demo`): its handlers in-process, then the page itself in a real
headless Chromium (Debian's, driven by Selenium through Debian's ChromeDriver): a real test
digit uploaded, a digit drawn with the mouse, a blank canvas and a non-image."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqmnist.data import load_split
from seqmnist.inference.early_exit import reads_everything
from seqmnist.inference.predictor import load_predictor
from seqmnist.inference.reading import read
from seqmnist.predict import run as predict_run
from tests.helpers import REAL_DATA_ROOT, make_checkpoint

gr = pytest.importorskip("gradio", reason="the demo extra: make install-extras")
from seqmnist.demo import BLANK, Demo, build_app, launch, main  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def ckpt(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model to serve: SEQMNIST_DEMO_CKPT (to take the docs' screenshot with a trained
    model) or a tiny one trained on the synthetic data."""
    if os.environ.get("SEQMNIST_DEMO_CKPT"):
        return Path(os.environ["SEQMNIST_DEMO_CKPT"])
    return make_checkpoint(tmp_path_factory.mktemp("demo") / "m.ckpt", synthetic_root, hidden=16)


@pytest.fixture(scope="module")
def test_digit(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MNIST test digit as a PNG (the synthetic test set's first image without it)."""
    real = (REAL_DATA_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    images, _ = load_split(REAL_DATA_ROOT if real else synthetic_root, "mnist", "test")
    path = tmp_path_factory.mktemp("digit") / "test_digit.png"
    Image.fromarray(images[0].numpy()).resize((112, 112), Image.Resampling.BICUBIC).save(path)
    return path


# -- the handlers -------------------------------------------------------------------------
def test_the_handlers_answer_pictures_and_explain_the_rest(
    ckpt: Path, test_digit: Path, pictures: dict, tmp_path: Path
) -> None:
    demo = Demo(load_predictor(ckpt), tmp_path)
    status, top, seen, gif, fig, slider, reading, early = demo.outputs(str(test_digit))
    assert "read in" in status and len(top) == 3 and seen.size == (280, 280)
    assert early.startswith("Early exit at p >= 0.99: answers **")
    assert Path(gif).is_file() and slider["maximum"] == 28 and reading.steps == 28
    frame, curve, text = demo.after(reading, 7)
    assert frame.size == (280, 280) and curve is not None and "After 7 of 28 rows" in text

    for nothing in (None, {"composite": np.zeros((280, 280, 4), np.uint8)}):
        from seqmnist.demo import read_canvas

        status, *rest = demo.outputs(read_canvas(nothing))
        assert status == BLANK and rest[0] is None
    status, *_ = demo.outputs(str(pictures["text"]))
    assert "not a picture that can be read" in status and "Traceback" not in status
    status, *_ = demo.outputs(str(pictures["truncated"]))
    assert "truncated or corrupt" in status


def test_a_huge_upload_is_refused_and_old_readings_are_deleted(
    ckpt: Path, test_digit: Path, tmp_path: Path
) -> None:
    """An upload of ~179 MP became several GB of float arrays per request, and
    every request left a GIF behind."""
    from PIL import Image

    demo = Demo(load_predictor(ckpt), tmp_path / "work")
    (tmp_path / "work").mkdir()
    huge = tmp_path / "huge.png"
    Image.new("1", (6000, 5000)).save(huge)  # 30 MP, a few kB on disk
    status, *rest = demo.outputs(str(huge))
    assert "6000x5000 pixels (30 MP)" in status and "scale the picture down" in status
    assert rest[0] is None
    for _ in range(Demo.KEEP_GIFS + 3):
        *_, gif, _fig, _slider, _reading, _early = demo.outputs(str(test_digit))
    gifs = sorted((tmp_path / "work").glob("reading-*.gif"))
    assert len(gifs) == Demo.KEEP_GIFS and Path(gif) in gifs


def test_the_page_says_at_which_row_early_exit_answers(
    ckpt: Path, test_digit: Path, tmp_path: Path
) -> None:
    # The thresholds come from the reading's own confidences (the top probability after each
    # row): a row whose confidence is higher than every row's before it is the first to reach
    # that confidence, so early exit at it answers at that row, before the last.
    predictor = load_predictor(ckpt)
    top = read(predictor, str(test_digit)).step_probabilities.max(-1)
    records = [
        row
        for row in range(2, 28)
        if top[row - 1] > top[: row - 1].max() and not reads_everything(float(top[row - 1]))
    ]
    assert records, f"no row before the last raises the confidence: {top}"
    late, early_row = records[-1], records[0]
    threshold = float(top[late - 1])

    demo = Demo(predictor, tmp_path, threshold=threshold)
    *_, reading, early = demo.outputs(str(test_digit))
    np.testing.assert_array_equal(reading.step_probabilities.max(-1), top)
    assert reading.answer_step(threshold) == late < 28
    best, prob = next(iter(reading.top(1, step=late).items()))
    assert early == (
        f"Early exit at p >= {threshold:g}: answers **{best}** ({100 * prob:.1f}%) "
        f"after row **{late}** of 28."
    )
    # Moving the page's threshold to an earlier row's confidence answers at that row, though
    # later rows reach it too (the first row that reaches it, not the last).
    fig, text = demo.rethreshold(reading, float(top[early_row - 1]))
    assert f"after row **{early_row}** of 28." in text and "never" not in text
    marks = [line.get_label() for line in fig.axes[0].get_lines()]
    assert f"answers (p >= {float(top[early_row - 1]):g})" in marks
    # 1 reads every row; the chart marks the row it answers at.
    fig, text = demo.rethreshold(reading, 1.0)
    assert "after row **28** of 28" in text
    marks = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "answers (p >= 1)" in marks
    # The same threshold from the page's first reading on (the Read-it button passes it).
    *_, early = demo.outputs(str(test_digit), 1.0)
    assert "after row **28** of 28" in early


@pytest.mark.parametrize("value", ["0", "1.2"])
def test_demo_refuses_a_threshold_outside_0_1(
    ckpt: Path, value: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--ckpt", str(ckpt), "--threshold", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold=" in err[0] and "(0, 1]" in err[0]


def test_demo_refuses_a_bad_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.ckpt").write_text("no")
    assert main(["--ckpt", str(tmp_path / "bad.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a PyTorch checkpoint" in err


# -- the page in a browser ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(ckpt: Path) -> Iterator[str]:
    app = build_app(load_predictor(ckpt))
    port = free_port()
    launch(app, "127.0.0.1", port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and ChromeDriver are not installed (make install-extras does it)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # Headless, no sandbox (root in CI), and none of Chromium's own calls home: the network
    # here is closed, and they would only be refused.
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1280,1250",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.ID, "read")))
    return By, WebDriverWait


def wait_status(driver, By, WebDriverWait, says: str) -> str:  # noqa: N803
    """The status line once it ``says`` something and Gradio's "processing" overlay is gone."""

    def text(d) -> str | bool:
        t = d.find_element(By.ID, "status").text
        return t if says in t and "processing" not in t else False

    return WebDriverWait(driver, 60).until(text)


def top_classes(driver, By, WebDriverWait) -> list[str]:  # noqa: N803
    """The Label's rows, best first: its text is its title, the top class in large type,
    then each class and its percentage."""

    def rows(d) -> list[str]:
        lines = d.find_element(By.ID, "top").text.splitlines()
        return [lines[i] for i in range(2, len(lines) - 1, 2) if lines[i + 1].endswith("%")]

    WebDriverWait(driver, 30).until(lambda d: len(rows(d)) > 0)
    return rows(driver)


@pytest.mark.e2e
def test_uploading_a_real_test_digit_shows_what_predict_says(
    browser, page: str, ckpt: Path, test_digit: Path, tmp_path: Path
) -> None:
    By, WebDriverWait = open_page(browser, page)  # noqa: N806
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Upload')]").click()
    upload = WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
    )
    upload.send_keys(str(test_digit))
    status = wait_status(browser, By, WebDriverWait, "read in")
    _, results = predict_run(str(ckpt), [str(test_digit)])
    expected = [t["class"] for t in results[0]["top"]]
    assert top_classes(browser, By, WebDriverWait) == expected
    assert status.startswith(f"{expected[0]} (")
    # The anytime view: the reading, the curve and the slider through the rows.
    assert browser.find_element(By.CSS_SELECTOR, "#reading img").get_attribute("src")
    assert browser.find_element(By.CSS_SELECTOR, "#curve img, #curve svg, #curve canvas")
    assert browser.find_element(By.ID, "steps").is_displayed()
    browser.save_screenshot(str(tmp_path / "upload.png"))


@pytest.mark.e2e
def test_a_digit_drawn_with_the_mouse_is_read(browser, page: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    By, WebDriverWait = open_page(browser, page)  # noqa: N806
    browser.find_element(By.CSS_SELECTOR, "#canvas button[aria-label='Brush']").click()
    canvas = browser.find_elements(By.CSS_SELECTOR, "#canvas canvas")[-1]
    # A '7': the bar, then the stem, in small moves as a hand makes them (offsets in px
    # from the canvas centre, inside its 280x280 drawing area).
    strokes = ActionChains(browser)
    x0, y0 = -60, -75
    strokes.move_to_element_with_offset(canvas, x0, y0).click_and_hold()
    for x1, y1 in ((60, -75), (-12, 85)):
        for i in range(1, 11):
            strokes.move_to_element_with_offset(
                canvas, x0 + (x1 - x0) * i // 10, y0 + (y1 - y0) * i // 10
            )
        x0, y0 = x1, y1
    strokes.release().perform()
    started = time.perf_counter()
    browser.find_element(By.ID, "read").click()
    status = wait_status(browser, By, WebDriverWait, "read in")
    seconds = time.perf_counter() - started
    assert len(top_classes(browser, By, WebDriverWait)) == 3
    early = browser.find_element(By.ID, "early").text
    assert early.startswith("Early exit at p >= 0.99: answers ") and " of 28" in early
    shot = os.environ.get("SEQMNIST_DEMO_SCREENSHOT") or str(tmp_path / "drawn.png")
    browser.save_screenshot(shot)
    print(f"drawn digit answered on the page in {seconds:.2f} s: {status} | {early}")


@pytest.mark.e2e
def test_a_blank_canvas_and_a_non_image_get_a_message(browser, page: str, pictures: dict) -> None:
    By, WebDriverWait = open_page(browser, page)  # noqa: N806
    browser.find_element(By.ID, "read").click()
    wait_status(browser, By, WebDriverWait, "Nothing to read: the canvas is blank")
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Upload')]").click()
    upload = WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
    )
    upload.send_keys(str(pictures["text"]))
    wait_status(browser, By, WebDriverWait, "not a picture that can be read")
    assert "Traceback" not in browser.page_source
