"""``gpoa serve`` in a real headless Chromium: the demo reference and three targets give the predictor's
masks in the zip the page downloads, a mask painted with the brush is the reference's mask, bad files get
a message on the page and the server goes on; the page asks nothing of any other address.

Debian's chromium and chromium-driver (``make setup`` installs them when it runs as root); Selenium is
given both paths, so nothing downloads a browser or a driver."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_CONFIG, ROOT
from PIL import Image

from gpoa import GPOAPredictor
from gpoa.io import read_mask
from gpoa.metrics import dice

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver (make setup does it as root)",
                allow_module_level=True)
for module, install in (("selenium", "pip install -r requirements.txt"), ("starlette", "pip install -e '.[app]'"),
                        ("uvicorn", "pip install -e '.[app]'")):
    pytest.importorskip(module, reason=f"{module} is not installed: {install} (make setup does it)")

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never look for a browser or a driver to download

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1400")
COMMAND = "import sys; from gpoa.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """``gpoa serve`` on a free port (demo config, cpu) and a headless Chromium, started side by side:
    (browser, the server's address, its folder). Stopping the server (SIGTERM, as a service manager
    does; Ctrl-C's SIGINT takes the same way) must delete the folder."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", COMMAND, "serve", "--config", str(DEMO_CONFIG), "--port", "0",
                                "--device", "cpu"], cwd=tmp_path_factory.mktemp("serve"), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.downloads = downloads
    try:
        line = process.stdout.readline()
        match = re.search(r"open (http://127\.0\.0\.1:\d+/) .*files in (\S+), deleted on exit", line)
        assert match, f"gpoa serve printed {line!r}{process.stdout.read() if process.poll() is not None else ''}"
        url, folder = match.group(1), Path(match.group(2))
        assert folder.is_dir()
        yield browser, url, folder
    finally:
        browser.quit()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert not folder.exists(), "the server run's folder is deleted when the server stops"
    assert "Traceback" not in output and output.strip().endswith("gpoa serve: stopped; its files are deleted"), output


def open_page(browser, url):
    browser.get_log("performance")  # forget earlier requests
    browser.get(url)
    wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")


def wait(browser, condition, seconds=30):
    return WebDriverWait(browser, seconds, poll_frequency=0.1).until(condition)


def requested_urls(browser) -> list:
    """Every URL the page asked for since the last call (Chrome's network log)."""
    events = (json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
    return [event["params"]["request"]["url"] for event in events if event["method"] == "Network.requestWillBeSent"]


def choose(browser, selector, *paths):
    browser.find_element(By.CSS_SELECTOR, selector).send_keys("\n".join(str(p) for p in paths))


def add_reference(browser, image, mask=None):
    count = len(browser.find_elements(By.CSS_SELECTOR, ".reference"))
    choose(browser, "#reference-input", image)
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".reference")) == count + 1)
    card = browser.find_elements(By.CSS_SELECTOR, ".reference")[-1]
    if mask is not None:
        choose(browser, ".reference:last-child .mask-input", mask)
        wait(browser, lambda b: card.find_element(By.CSS_SELECTOR, ".mask-state").text == f"mask: {Path(mask).name}")
    return card


def run_targets(browser, targets, truths=()):
    choose(browser, "#target-input", *targets)
    if truths:
        choose(browser, "#truth-input", *truths)
    browser.find_element(By.ID, "run").click()
    wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", 60)
    return browser.find_elements(By.CSS_SELECTOR, ".result")


def fetch(url) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def png_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0


def test_the_page_segments_the_demo_reference_and_three_targets_as_the_predictor_does(page, demo_master, tmp_path):
    browser, url, _ = page
    data = demo_master / "membrane"
    reference, mask = data / "reference_image" / "reference.png", data / "reference_mask" / "reference.png"
    targets = sorted((data / "target_image").iterdir())[:3]
    truths = [data / "target_mask" / t.name for t in targets]
    open_page(browser, url)
    add_reference(browser, reference, mask)
    cards = run_targets(browser, targets, truths)
    assert [c.get_attribute("data-state") for c in cards] == ["done"] * 3
    assert browser.find_element(By.ID, "progress-text").text == "3 of 3 done"
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "3"

    predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")
    predictor.set_reference(reference, mask)
    expected = [predictor.predict(t) for t in targets]
    for card, target, truth, prediction in zip(cards, targets, truths, expected):
        assert card.find_element(By.CSS_SELECTOR, ".title").text == target.name
        assert card.find_element(By.CSS_SELECTOR, "b.dice").text == f"{dice(prediction.mask, read_mask(truth)):.3f}"
        assert card.find_element(By.CSS_SELECTOR, "b.present").text == "yes"
        assert card.find_element(By.CSS_SELECTOR, "b.confidence").text == f"{prediction.confidence:.2f}"
        # the optimised prompts are shown, the initial ones on a toggle: green object, red background points
        shown = card.find_elements(By.CSS_SELECTOR, "svg g.optimized circle")
        assert len(shown) == len(prediction.prompts.optimized.labels) and all(c.is_displayed() for c in shown)
        assert {c.get_attribute("class") for c in shown} == {"object", "background"}
    browser.find_element(By.CSS_SELECTOR, "input[name=prompt-view][value=initial]").click()
    assert all(c.is_displayed() for c in cards[0].find_elements(By.CSS_SELECTOR, "svg g.initial circle"))
    assert not any(c.is_displayed() for c in cards[0].find_elements(By.CSS_SELECTOR, "svg g.optimized circle"))
    browser.find_element(By.CSS_SELECTOR, "input[name=prompt-view][value=optimized]").click()

    browser.find_element(By.ID, "download").click()
    archive = browser.downloads / "gpoa-results.zip"
    wait(browser, lambda b: archive.is_file())
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == sorted(
            ["results.csv"] + [f"masks/{i}-{t.stem}.png" for i, t in enumerate(targets, 1)]
            + [f"prompts/{i}-{t.stem}.{kind}.json" for i, t in enumerate(targets, 1) for kind in ("initial", "optimized")])
        for i, (target, prediction) in enumerate(zip(targets, expected), 1):
            assert np.array_equal(png_mask(zipped.read(f"masks/{i}-{target.stem}.png")), prediction.mask)
            for kind in ("initial", "optimized"):
                prompts = json.loads(zipped.read(f"prompts/{i}-{target.stem}.{kind}.json"))
                expected_set = getattr(prediction.prompts, kind)
                assert prompts["image"] == target.name
                assert prompts["positive_indices"] == expected_set.positive_indices.tolist()
                assert prompts["negative_indices"] == expected_set.negative_indices.tolist()
    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 0
    outside = [u for u in requested_urls(browser) if not u.startswith((url, "data:", "blob:"))]
    assert not outside, f"the page asked for addresses other than its server: {outside}"


def test_a_mask_painted_with_the_brush_is_the_reference_mask(page, demo_master):
    browser, url, _ = page
    data = demo_master / "membrane"
    reference = data / "reference_image" / "reference.png"
    target = sorted((data / "target_image").iterdir())[0]
    open_page(browser, url)
    card = add_reference(browser, reference)
    # nothing painted yet: the server says the mask is empty, on the page
    run_targets(browser, [target])
    message = browser.find_element(By.ID, "reference-message")
    assert message.is_displayed()
    assert message.text.startswith(f"the painted mask of {reference.name}: has no foreground pixels")

    paint = card.find_element(By.CSS_SELECTOR, "canvas.paint")
    width, height = Image.open(reference).size
    shown = paint.size["width"]
    scale = width / shown

    def stroke(x0, x1, y):  # in image pixels, from the left edge and the top of the canvas
        ActionChains(browser).move_to_element_with_offset(paint, x0 / scale - shown / 2, y / scale - paint.size["height"] / 2) \
            .click_and_hold().move_by_offset((x1 - x0) / scale, 0).release().perform()

    size = card.find_element(By.CSS_SELECTOR, ".brush-size")
    browser.execute_script("arguments[0].value = 20", size)
    stroke(100, 400, 150)
    card.find_element(By.CSS_SELECTOR, "button.eraser").click()
    browser.execute_script("arguments[0].value = 10", size)
    stroke(200, 260, 150)
    cards = run_targets(browser, [target])
    assert not browser.find_element(By.ID, "reference-message").is_displayed()
    assert cards[0].get_attribute("data-state") == "done"

    painted = png_mask(fetch(f"{url}api/uploads/{card.get_attribute('data-mask')}/preview.png"))
    radius = 20 * scale  # the brush's radius is in screen pixels
    assert painted.shape == (height, width)
    assert painted[150, 120:180].all() and painted[150, 300:380].all()  # the brush
    assert not painted[150, 215:245].any()  # the eraser
    assert not painted[int(150 + radius + 3):].any() and not painted[:int(150 - radius - 3)].any()
    assert painted[int(150 + radius - 3), 150] and painted[int(150 - radius + 3), 150]  # the brush size
    predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")
    predictor.set_reference(reference, painted)
    result = fetch(f"{url}api/results/{cards[0].get_attribute('data-result')}/mask.png")
    assert np.array_equal(png_mask(result), predictor.predict(target).mask)


def test_bad_files_get_a_message_on_the_page_and_the_next_request_works(page, demo_master, tmp_path):
    browser, url, _ = page
    data = demo_master / "membrane"
    reference, mask = data / "reference_image" / "reference.png", data / "reference_mask" / "reference.png"
    targets = sorted((data / "target_image").iterdir())[:2]
    notes = tmp_path / "notes.png"  # not an image, whatever its name says
    notes.write_text("not an image")
    small = tmp_path / "small-mask.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(small)
    open_page(browser, url)

    choose(browser, "#reference-input", notes)
    message = browser.find_element(By.ID, "reference-message")
    wait(browser, lambda b: message.is_displayed())
    assert message.text == "notes.png: is not an image; upload a PNG, JPEG, TIFF or BMP file"
    assert not browser.find_elements(By.CSS_SELECTOR, ".reference")

    add_reference(browser, reference, small)  # a mask of another size than its image
    run_targets(browser, targets[:1])
    assert message.text == ("small-mask.png: is 30x20 pixels but its image is 540x311; a mask must have exactly the "
                            "size of the image it belongs to")

    choose(browser, ".reference .mask-input", mask)
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, ".mask-state").text == f"mask: {mask.name}")
    cards = run_targets(browser, [targets[0], notes, targets[1]])
    assert [c.get_attribute("data-state") for c in cards] == ["done", "failed", "done"]
    assert cards[1].find_element(By.CSS_SELECTOR, ".message").text == \
        "notes.png: is not an image; upload a PNG, JPEG, TIFF or BMP file"
    assert browser.find_element(By.ID, "progress-text").text == "3 of 3 done, 1 failed"
    assert not message.is_displayed()
    for card in (cards[0], cards[2]):  # the other results stay, with their pictures
        overlay = card.find_element(By.CSS_SELECTOR, ".picture img")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0
    shutil.rmtree(browser.downloads)
    browser.downloads.mkdir()
    browser.find_element(By.ID, "download").click()
    wait(browser, lambda b: (browser.downloads / "gpoa-results.zip").is_file())
    with zipfile.ZipFile(browser.downloads / "gpoa-results.zip") as zipped:
        assert sorted(n for n in zipped.namelist() if n.startswith("masks/")) == \
            [f"masks/1-{targets[0].stem}.png", f"masks/2-{targets[1].stem}.png"]
    assert json.loads(fetch(f"{url}api/options"))["max_pixels"] == 40_000_000
