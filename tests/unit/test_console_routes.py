"""The console's routes (api/console.py): its files served without the token while every data
call still needs it, /ui redirected to /ui/, any other name a JSON 404, every file shipped."""

from __future__ import annotations

from api.console import UI_DIR, is_console_path
from tests.unit.test_api_support import served


async def test_the_page_is_public_and_the_data_is_not() -> None:
    async with served(api_token="s3cret") as (client, _):
        page = await client.get("/ui/")
        assert page.status == 200
        assert page.content_type == "text/html"
        assert '<script type="module" src="/ui/app.js">' in await page.text()
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        script = await client.get("/ui/app.js")
        assert (script.status, script.content_type) == (200, "text/javascript")
        assert (await client.get("/api/v1/runs")).status == 401
        given = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/api/v1/runs", headers=given)).status == 200


async def test_redirect_and_unknown_names() -> None:
    async with served() as (client, _):
        moved = await client.get("/ui", allow_redirects=False)
        assert (moved.status, moved.headers["Location"]) == (308, "/ui/")
        missing = await client.get("/ui/nothing.js")
        assert missing.status == 404
        assert "nothing.js" in (await missing.json())["message"]
        assert (await client.get("/ui/..%2Fconsole.py")).status == 404


def test_console_paths_and_files() -> None:
    assert is_console_path("/ui")
    assert is_console_path("/ui/run.js")
    assert not is_console_path("/uix")
    assert not is_console_path("/api/v1/ui")
    names = {p.name for p in UI_DIR.iterdir()}
    assert {"index.html", "app.js", "style.css", "graph.js"} <= names
