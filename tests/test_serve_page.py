"""The page at `/` driven in headless Chromium (Debian's `chromium`, through Playwright's executable_path):
type a prompt, generate, wait for the image and decode it; draw a mask with the brush and inpaint; make
variations where the system supports them. With T2I_SCREENSHOT=1 it saves the README's screenshot,
docs/serve_page.png (otherwise into the test's temporary folder, so `make test` leaves the tree clean)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from t2i.serve.process import running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="the page tests need playwright (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="t2i serve needs the 'serve' extra (pip install -e '.[serve]')")

CHROMIUM = os.environ.get("T2I_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium to drive: install Debian's `chromium` package (apt-get install chromium) or set "
                "T2I_CHROMIUM to a Chromium binary", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_page.png"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def shipped_ldm() -> bool:
    from t2i.api import shipped_weights

    return (shipped_weights("ldm") / "system.json").is_file()


def image_bytes(page, img) -> bytes:
    """The bytes behind an <img> (a blob: URL), read in the page."""
    b64 = page.evaluate("""async (img) => {
        const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let s = ""; for (const b of buf) s += String.fromCharCode(b);
        return btoa(s);
    }""", img)
    return base64.b64decode(b64)


def decoded(page, img) -> Image.Image:
    im = Image.open(io.BytesIO(image_bytes(page, img)))
    im.load()
    return im


def test_generate_and_inpaint_in_the_page(browser, tmp_path):
    """The shipped ldm when it is installed (a screenshot worth showing), else a tiny random one."""
    real = shipped_ldm()
    args = ("--systems", "ldm") if real else ("--tiny", "--systems", "ldm")
    with running_server(*args) as (url, _):
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#model[data-ready='1']")
        assert page.locator("#model option").all_inner_texts()[0].startswith("ldm")
        page.fill("#prompt", "a red circle")
        page.fill("#negative", "green")
        page.fill("#steps", "20" if real else "3")
        page.fill("#seed", "3")
        page.click("#go")
        page.wait_for_selector(".card img", timeout=60_000)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
        assert page.eval_on_selector("#bar", "b => b.value === b.max && b.max > 1")  # the SSE progress bar moved
        im = decoded(page, page.query_selector(".card img"))
        assert im.format == "PNG" and im.text["prompt"] == "a red circle"
        assert im.text["seed"] == "3" and im.text["negative_prompt"] == "green"
        card = page.locator(".card").first
        assert "a red circle" in card.inner_text() and card.locator("a[download]").count() == 1
        assert not card.locator("button[data-needs='vary']").is_visible()  # ldm makes no variations

        card.locator("button[data-needs='inpaint']").click()
        page.wait_for_selector("#editor.open")
        box = page.locator("#mask").bounding_box()
        for row in [0.12 + 0.08 * i for i in range(10)]:  # overlapping brush strokes: the left part
            page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * row)
            page.mouse.down()
            for k in range(8):
                page.mouse.move(box["x"] + box["width"] * (0.1 + 0.04 * k), box["y"] + box["height"] * row)
            page.mouse.up()
        painted = page.evaluate("""() => { const c = document.getElementById('mask');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n / (c.width * c.height); }""")
        assert 0.15 < painted < 0.7
        page.fill("#prompt", "a blue square")
        page.fill("#seed", "2")
        page.click("#inpaint")
        page.wait_for_function("document.querySelectorAll('.card').length === 2", timeout=60_000)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
        out = decoded(page, page.query_selector(".card img"))
        assert out.text["mode"] == "inpaint" and out.text["prompt"] == "a blue square" and out.size == im.size
        assert "inpaint" in page.locator(".card").first.inner_text()
        assert not errors, errors
        shot = README_SCREENSHOT if real and os.environ.get("T2I_SCREENSHOT") else tmp_path / "serve_page.png"
        page.screenshot(path=str(shot))  # the README's picture only of the real model, and only when asked
        assert shot.stat().st_size > 10_000
        page.close()


def test_variations_button_where_the_system_varies_and_errors_in_the_page(browser):
    with running_server("--tiny", "--systems", "tiny-vary,ldm", "--api-key", "page-key") as (url, _):
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#keybox:not([hidden])")  # the server wants a key: the page asks for it
        assert "API key" in page.inner_text("#status")
        page.fill("#apikey", "page-key")
        page.dispatch_event("#apikey", "change")
        page.wait_for_selector("#model[data-ready='1']")
        page.select_option("#model", "tiny-vary")
        page.fill("#prompt", "two blue squares")
        page.fill("#steps", "2")
        page.click("#go")
        page.wait_for_selector(".card img", timeout=60_000)
        vary = page.locator(".card button[data-needs='vary']").first
        assert vary.is_visible()
        vary.click()
        page.wait_for_function("document.querySelectorAll('.card').length === 2", timeout=60_000)
        assert decoded(page, page.query_selector(".card img")).text["mode"] == "vary"
        page.fill("#size", "huge")  # a bad request: the server's one-line message shows in the page
        page.click("#go")
        page.wait_for_function("document.getElementById('status').className === 'error'")
        assert "size must be" in page.inner_text("#status")
        page.close()
