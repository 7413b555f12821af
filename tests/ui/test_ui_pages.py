"""What a person sees: the Dagster UI's asset pages for finished takes, and the API docs page.

Headless Chromium walks the pages as a person would (asset page, its Partitions tab, the task's
partition, the latest materialization's metadata) and saves screenshots under
test-artifacts/screenshots/.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import PROJECT_A, AssetServer, RunningStack, jpeg, scene_task

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

# Deadline for anything the UI has to render; a loaded CI machine can be slow.
WAIT = 90

# The endpoints the HTTP contract documents; anything else in /openapi.json is checked too.
DOCUMENTED = {
    ("POST", "/api/v1/tasks/submit"),
    ("GET", "/api/v1/tasks/{task_id}/status"),
    ("DELETE", "/api/v1/tasks/{task_id}/cancel"),
    ("POST", "/api/v1/tasks/{task_id}/retry"),
    ("GET", "/api/v1/projects/{project_id}/tasks"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/workers/status"),
}

# Rows of the metadata table on the page: key, value text, and the value's link if any.
METADATA_ROWS_JS = """
return Array.from(document.querySelectorAll('tr')).map((tr) => {
  const cells = Array.from(tr.querySelectorAll('td'));
  if (cells.length < 2) return null;
  const link = cells[1].querySelector('a[href]');
  return [cells[0].innerText.trim(), cells[1].innerText.trim(), link ? link.href : null];
}).filter(Boolean);
"""

# Images rendered in the metadata row `preview`: source and decoded width (0 = broken).
PREVIEW_ROW_JS = """
const row = Array.from(document.querySelectorAll('tr')).find(
  (tr) => tr.querySelector('td') && tr.querySelector('td').innerText.trim() === 'preview');
if (!row) return null;
return {
  images: Array.from(row.querySelectorAll('img')).map((img) => [img.src, img.naturalWidth]),
  html: row.innerHTML.slice(0, 600),
};
"""

# Operations Swagger UI rendered: method and path of every operation block.
SWAGGER_OPS_JS = """
return Array.from(document.querySelectorAll('.opblock')).map((block) => [
  block.querySelector('.opblock-summary-method').innerText.trim(),
  block.querySelector('.opblock-summary-path').getAttribute('data-path'),
]);
"""


def _wait(driver: WebDriver) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.25)


def _shoot(driver: WebDriver, screenshots: Path, name: str) -> Path:
    path = screenshots / name
    assert driver.save_screenshot(str(path)), f"screenshot {path} not written"
    return path


@pytest.fixture(scope="module")
def finished_takes(running_stack: RunningStack, asset_server: AssetServer) -> dict[str, Any]:
    """A character image and a scene video, completed, each in a partition of its own."""
    suffix = uuid.uuid4().hex[:8]
    character, scene = f"ui_char_{suffix}", f"ui_scene_{suffix}"
    frames = [
        asset_server.add(f"/ui-{suffix}-1.jpg", "image/jpeg", jpeg((40, 40, 80))),
        asset_server.add(f"/ui-{suffix}-2.jpg", "image/jpeg", jpeg((100, 70, 40))),
    ]
    video_body = scene_task(frames, resolution="640x360")
    video_body["metadata"] = {**video_body["metadata"], "scene_id": scene}
    with running_stack.client() as client:
        image = running_stack.submit_image(client, metadata={"character_id": character})
        resp = client.post("/api/v1/tasks/submit", json=video_body)
        assert resp.status_code == 202, resp.text
        video = resp.json()
        image_doc = running_stack.wait_terminal(client, image["task_id"], timeout=300)
        video_doc = running_stack.wait_terminal(client, video["task_id"], timeout=400)
    assert image_doc["status"] == "completed", image_doc.get("error")
    assert video_doc["status"] == "completed", video_doc.get("error")
    return {
        "character_image": (f"{PROJECT_A}/{character}", image_doc, "Detective in 1920s noir style"),
        "scene_video": (f"{PROJECT_A}/{scene}", video_doc, "Detective enters the dark alley"),
    }


@pytest.mark.parametrize("asset", ["scene_video", "character_image"])
def test_asset_page_shows_the_tasks_partition_and_take_metadata(
    asset: str,
    finished_takes: dict[str, Any],
    running_stack: RunningStack,
    browser: WebDriver,
    screenshots: Path,
) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    partition, doc, prompt_text = finished_takes[asset]
    wait = _wait(browser)

    # 1. The asset's page, as reached from the catalog.
    browser.get(f"{running_stack.dagster_url}/assets/{asset}")
    partitions_tab = wait.until(
        ec.element_to_be_clickable(
            (By.XPATH, "//a[@role='tab' and normalize-space()='Partitions']")
        )
    )
    wait.until(ec.presence_of_element_located((By.XPATH, f"//*[normalize-space()='{asset}']")))
    wait.until(
        ec.presence_of_element_located(
            (By.XPATH, "//*[normalize-space()='Latest materialization']")
        )
    )
    _shoot(browser, screenshots, f"dagster-{asset}-asset.png")

    # 2. Its Partitions tab: the task's project/subject partition is listed; open it.
    partitions_tab.click()
    search = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "input[placeholder^='Filter by name']"))
    )
    search.send_keys(partition)
    item = wait.until(ec.element_to_be_clickable((By.XPATH, f"//*[@title='{partition}']")))
    item.click()

    # 3. The partition's latest materialization and its metadata: this task's take.
    def take_rows(driver: WebDriver) -> dict[str, tuple[str, str | None]] | None:
        rows = {key: (value, href) for key, value, href in driver.execute_script(METADATA_ROWS_JS)}
        return rows if rows.get("task_id", ("",))[0] == doc["task_id"] else None

    rows = wait.until(take_rows)
    assert "view=partitions" in browser.current_url
    heading = browser.find_elements(By.XPATH, f"//*[normalize-space()='{partition}']")
    assert heading, f"partition {partition} not shown"
    _shoot(browser, screenshots, f"dagster-{asset}-partition.png")
    prompt_row = browser.find_element(By.XPATH, "//tr[td[1][normalize-space()='prompt']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", prompt_row)
    _shoot(browser, screenshots, f"dagster-{asset}-metadata.png")

    media_url = doc["result"]["media_url"]
    assert rows["media_url"][0] == media_url
    assert rows["media_url"][1] == media_url, "media_url is not rendered as a link"
    assert prompt_text in rows["prompt"][0]
    assert rows["model"][0] == doc["result"]["metadata"]["model"]
    assert rows["model"][0], "model is empty"

    # 4. The take's preview is a picture: the image itself, or the video's last frame inlined.
    def preview_images(driver: WebDriver) -> list[tuple[str, int]] | None:
        row = driver.execute_script(PREVIEW_ROW_JS) or {"images": []}
        return [tuple(i) for i in row["images"] if i[1] > 0] or None

    try:
        images = wait.until(preview_images)
    except TimeoutException as exc:
        row = browser.execute_script(PREVIEW_ROW_JS)
        raise AssertionError(f"no rendered image in the preview row: {row}") from exc
    preview_row = browser.find_element(By.XPATH, "//tr[td[1][normalize-space()='preview']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", preview_row)
    _shoot(browser, screenshots, f"dagster-{asset}-preview.png")
    [(src, width)] = images
    if asset == "scene_video":
        assert src.startswith("data:image/webp;base64,"), src[:80]
    else:
        assert src == media_url
    assert width > 0


def test_api_docs_page_lists_every_endpoint(
    running_stack: RunningStack,
    browser: WebDriver,
    screenshots: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    spec = httpx.get(f"{running_stack.api_url}/openapi.json", timeout=30).json()
    methods = {"get", "post", "put", "patch", "delete"}
    in_spec = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in methods
    }
    assert in_spec >= DOCUMENTED, DOCUMENTED - in_spec
    assert any(m == "GET" and p.startswith("/media/") for m, p in in_spec), "media not documented"

    browser.get(f"{running_stack.api_url}/docs")
    wait = _wait(browser)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))

    def rendered(driver: WebDriver) -> set[tuple[str, str]] | None:
        ops = {(method.upper(), path) for method, path in driver.execute_script(SWAGGER_OPS_JS)}
        return ops if len(ops) >= len(in_spec) else None

    shown = wait.until(rendered)
    title = browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert "MovieGen Task Service" in title
    assert shown == in_spec
    _shoot(browser, screenshots, "api-docs.png")
    # The whole page too, so every listed endpoint is visible in one image.
    height = int(browser.execute_script("return document.documentElement.scrollHeight;"))
    shot = browser.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1600, "height": height, "scale": 1},
        },
    )
    import base64

    (screenshots / "api-docs-full.png").write_bytes(base64.b64decode(shot["data"]))
    scripts = [
        s.get_attribute("src") or "" for s in browser.find_elements(By.CSS_SELECTOR, "script")
    ]
    # Swagger UI comes from the API itself: the page works without internet access.
    assert any(src.endswith("/docs-static/swagger-ui-bundle.js") for src in scripts), scripts
    assert all(src.startswith(running_stack.api_url) for src in scripts if src), scripts
