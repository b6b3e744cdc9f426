"""The retrieval page in a real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium): upload a real image, wait for k thumbnails, and check that their labels and the
class bars say what the JSON API says. A screenshot is kept as a test artifact. Also: /docs works
with no network (its assets come from a package)."""

import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.servers import png

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    if exe is None or driver_exe is None:
        pytest.fail("Chromium is needed: apt-get install chromium chromium-driver (Debian)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver_exe))
    yield driver
    driver.quit()


def test_upload_shows_the_apis_neighbours_and_classes(browser, server, client, cifar10,
                                                      tmp_path) -> None:
    image = tmp_path / "query.png"
    image.write_bytes(png(cifar10[1].images[12]))
    browser.get(server.url + "/")
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("6")
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
    # every thumbnail loaded (naturalWidth > 0 only once the PNG decoded in the browser)
    wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) > 0
                             for img in d.find_elements(By.CSS_SELECTOR, "#hits img")))
    api = client.post("/v1/search?k=6", files=[("files", ("q.png", image.read_bytes(),
                                                          "image/png"))]).json()
    assert [h.get_attribute("data-id") for h in hits] == [r["id"] for r in api["results"][0]]
    assert [h.get_attribute("data-label") for h in hits] == \
        [r["label"] for r in api["results"][0]]
    classes = client.post("/v1/classify?k=5", files=[("files", ("q.png", image.read_bytes(),
                                                                "image/png"))]).json()
    bars = browser.find_elements(By.CSS_SELECTOR, "#classes .bar")
    assert [b.get_attribute("data-label") for b in bars] == \
        [c["label"] for c in classes["results"][0]]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "retrieval-page.png"))
    assert (ARTIFACTS / "retrieval-page.png").stat().st_size > 5000


def test_docs_load_without_a_network(browser, server) -> None:
    browser.get(server.url + "/docs")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert "/v1/embed" in paths and "/v1/embeddings" in paths
    html = browser.page_source
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html


def test_thumbnails_of_bundle_and_added_items(client, cifar10) -> None:
    from tests.support.gallery_chaos import KEY

    r = client.get("/v1/thumbnails/airplane/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    import base64

    raw = png(cifar10[1].images[30])
    item = {"items": [{"id": "thumb/1", "label": "mine",
                       "image": base64.b64encode(raw).decode()}]}
    assert client.post("/v1/gallery", json=item, headers=KEY).status_code == 200
    t = client.get("/v1/thumbnails/thumb/1")
    assert t.status_code == 200 and t.content[:4] == b"\x89PNG"
    assert client.delete("/v1/gallery/thumb/1", headers=KEY).status_code == 200
    assert client.get("/v1/thumbnails/thumb/1").status_code == 404
    assert client.get("/v1/thumbnails/nope").status_code == 404


def test_page_loads_thumbnails_when_keys_are_required(browser, bundle_dir, cifar10,
                                                      tmp_path) -> None:
    """With REQUIRE_API_KEY the page trades the typed key for a session cookie, so its <img>
    tags load; an id is one encoded path segment, so '../..' cannot lead elsewhere."""
    from tests.support.servers import API_KEY, Server

    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_REQUIRE_API_KEY="true").start()
    try:
        image = tmp_path / "query.png"
        image.write_bytes(png(cifar10[1].images[12]))
        browser.get(srv.url + "/")
        browser.find_element(By.ID, "key").send_keys(API_KEY)
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        imgs = browser.find_elements(By.CSS_SELECTOR, "#hits img")
        assert imgs
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete", i)
                                 for i in imgs))
        assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 0
                   for i in imgs)
        for hostile in ("../../../metrics", "a/../../x", "%2e%2e/metrics"):
            path = browser.execute_script(
                "return new URL(thumbnail(arguments[0]), location.href).pathname", hostile)
            assert path.startswith("/v1/thumbnails/") and path.count("/") == 3, path
    finally:
        browser.execute_script("localStorage.clear()")
        srv.stop()


def test_page_picks_among_several_models(browser, bundle_dir, second_bundle_dir, cifar10,
                                         tmp_path) -> None:
    """Two models: the page lists both; with the second picked, its neighbours, classes and
    thumbnails are the second model's (each model has its own gallery)."""
    from selenium.webdriver.support.ui import Select

    from tests.support.servers import Server

    srv = Server(bundle_dir, tmp_path / "data",
                 SIMCLR_EMBED_MORE_BUNDLES=str(second_bundle_dir)).start()
    try:
        second = httpx.get(srv.url + "/v1/models").json()["data"][1]["id"]
        image = tmp_path / "query.png"
        image.write_bytes(png(cifar10[1].images[7]))
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models"))
        assert browser.find_element(By.ID, "model-pick").is_displayed()
        Select(browser.find_element(By.ID, "model")).select_by_value(second)
        browser.find_element(By.ID, "k").clear()
        browser.find_element(By.ID, "k").send_keys("5")
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        files = [("files", ("q.png", image.read_bytes(), "image/png"))]
        want = httpx.post(srv.url + "/v1/search", params={"k": 5, "model": second},
                          files=files).json()["results"][0]
        other = httpx.post(srv.url + "/v1/search", params={"k": 5}, files=files).json()
        hits = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
        assert [h.get_attribute("data-id") for h in hits] == [r["id"] for r in want]
        assert [r["score"] for r in want] != [r["score"] for r in other["results"][0]]
        imgs = browser.find_elements(By.CSS_SELECTOR, "#hits img")
        assert all(f"model={second}" in i.get_attribute("src") for i in imgs)
        wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0
                                 for i in imgs))
    finally:
        srv.stop()


def isolated_point(points: list[dict], width: int = 720, height: int = 480) -> dict:
    """A point with no other within 10 canvas pixels: a click on it can mean only it."""
    pad = 8
    xy = [(pad + p["x"] * (width - 2 * pad), pad + (1 - p["y"]) * (height - 2 * pad))
          for p in points]
    for n, (x, y) in enumerate(xy):
        if all((x - a) ** 2 + (y - b) ** 2 > 100 for m, (a, b) in enumerate(xy) if m != n):
            return points[n] | {"px": x, "py": y}
    raise AssertionError("every point has a neighbour within 10 pixels")


def test_the_map_draws_the_gallery_and_a_click_searches(browser, server, client, cifar10,
                                                        tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 180)  # UMAP's first call compiles (numba)
    canvas = browser.find_element(By.ID, "gallery-map")
    wait.until(lambda d: int(canvas.get_attribute("data-points") or 0) > 0)
    served = client.get("/v1/gallery/map").json()
    assert int(canvas.get_attribute("data-points") or 0) == served["shown"]
    drawn = browser.execute_script(
        "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
        canvas)
    assert drawn >= served["shown"]  # at least a pixel for each point
    about = browser.find_element(By.ID, "about")
    model = client.get("/v1/model").json()
    assert model["model"] in about.text and model["precision"] in about.text

    point = isolated_point(served["points"])
    # Wholly in view: selenium's offsets start from the centre of the element's visible part.
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(browser).move_to_element_with_offset(
        canvas, int(point["px"] - 360), int(point["py"] - 240)).click().perform()
    body = browser.find_element(By.TAG_NAME, "body")
    wait.until(lambda d: body.get_attribute("data-state"))
    assert body.get_attribute("data-state") == "done"
    assert body.get_attribute("data-query-id") == point["id"]
    vector = client.get("/v1/gallery/" + point["id"]).json()["embedding"]
    api = client.post("/v1/search", json={"embeddings": [vector], "k": 8}).json()
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
    assert [h.get_attribute("data-id") for h in hits] == [r["id"] for r in api["results"][0]]

    image = tmp_path / "query.png"  # a dropped image lands beside its neighbours
    image.write_bytes(png(cifar10[1].images[3]))
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: canvas.get_attribute("data-query-x"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "gallery-map.png"))
    assert 0 <= float(canvas.get_attribute("data-query-x") or -1) <= 1
