"""The browser client's side of the server: its files at ``/`` and the development login."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tidegate.server.settings import Settings
from tidegate.server.web import SOURCE_WEB_DIR, dev_login_enabled

from .conftest import make_settings, run_server


async def test_dev_login_mints_a_session_token_the_control_channel_accepts(
    tmp_path: Path,
) -> None:
    """On a loopback server the dev login answers a short-lived token that opens a session."""
    async with run_server(make_settings(tmp_path, dev_login_ttl_s=120.0)) as live:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{live.http}/v1/dev/token")
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body["expires_in_s"] == 120.0
        principal = await live.runtime.verifier.verify(body["token"])
        assert principal.scopes == frozenset({"session"}) and not principal.is_admin
        async with await live.client(token=body["token"]) as c:
            created = await c.create_session({"mode": "loopback"})
            assert created.session_id


async def test_dev_login_off_answers_404_and_refuses_foreign_origins(tmp_path: Path) -> None:
    """``dev_login=off`` is a 404; with it on, a page of another origin is refused (403)."""
    async with run_server(make_settings(tmp_path, dev_login="off")) as live:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{live.http}/v1/dev/token")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    on = make_settings(tmp_path, dev_login="on")
    async with run_server(on) as live, httpx.AsyncClient() as http:
        r = await http.post(f"{live.http}/v1/dev/token", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "evil.example" in r.json()["error"]["message"]
        same = await http.post(f"{live.http}/v1/dev/token", headers={"Origin": live.http})
        assert same.status_code == 200


async def test_dev_login_auto_refuses_proxied_requests(tmp_path: Path) -> None:
    """``auto`` answers 404 to a request a proxy forwarded; ``on`` does not ask."""
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    async with run_server(make_settings(tmp_path)) as live, httpx.AsyncClient() as http:
        r = await http.post(f"{live.http}/v1/dev/token", headers=proxied)
        assert r.status_code == 404 and "unproxied" in r.json()["error"]["message"]
        for header in ("Forwarded", "X-Real-IP"):
            r = await http.post(f"{live.http}/v1/dev/token", headers={header: "for=203.0.113.9"})
            assert r.status_code == 404
    on = make_settings(tmp_path, dev_login="on")
    async with run_server(on) as live, httpx.AsyncClient() as http:
        assert (await http.post(f"{live.http}/v1/dev/token", headers=proxied)).status_code == 200


async def test_dev_login_and_its_page_refuse_a_rebound_host(tmp_path: Path) -> None:
    """A DNS-rebinding page (Host and a matching Origin naming another name, or another port)
    gets neither a token nor the page (403); 127.0.0.1, localhost and [::1] with the
    server's port get both."""
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>tidegate client</title>")
    async with (
        run_server(make_settings(tmp_path, web_dir=web)) as live,
        httpx.AsyncClient() as http,
    ):
        for host in (f"rebind.example:{live.port}", f"127.0.0.1:{live.port + 1}", "localhost"):
            rebound = {"Host": host, "Origin": f"http://{host}"}
            r = await http.post(f"{live.http}/v1/dev/token", headers=rebound)
            assert r.status_code == 403, (host, r.text)
            assert r.json()["error"]["code"] == "forbidden" and host in r.json()["error"]["message"]
            page = await http.get(f"{live.http}/", headers={"Host": host})
            assert page.status_code == 403 and "tidegate client" not in page.text
        for host in (f"127.0.0.1:{live.port}", f"localhost:{live.port}", f"[::1]:{live.port}"):
            local = {"Host": host, "Origin": f"http://{host}"}
            r = await http.post(f"{live.http}/v1/dev/token", headers=local)
            assert r.status_code == 200 and r.json()["token"], (host, r.text)
            page = await http.get(f"{live.http}/", headers={"Host": host})
            assert page.status_code == 200 and "tidegate client" in page.text


async def test_dev_login_on_serves_loopback_and_allowed_hosts_only(tmp_path: Path) -> None:
    """``dev_login=on`` also answers the hosts of ``allowed_origins`` (a LAN demo names its
    own), and still no other Host."""
    kiosk = "http://kiosk.example:8080"
    settings = make_settings(tmp_path, dev_login="on", allowed_origins=(kiosk,))
    async with run_server(settings) as live, httpx.AsyncClient() as http:
        listed = {"Host": "kiosk.example:8080", "Origin": kiosk}
        assert (await http.post(f"{live.http}/v1/dev/token", headers=listed)).status_code == 200
        rebound = {"Host": "rebind.example:8080", "Origin": kiosk}
        assert (await http.post(f"{live.http}/v1/dev/token", headers=rebound)).status_code == 403


def test_dev_login_auto_is_on_only_on_loopback() -> None:
    """``auto`` serves tokens on 127.0.0.1, ::1 and localhost, never on another address."""
    on = [Settings(host=h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2")]
    off = [Settings(host=h) for h in ("0.0.0.0", "10.250.0.1", "example.org", "::")]
    assert all(dev_login_enabled(s) for s in on)
    assert not any(dev_login_enabled(s) for s in off)
    assert dev_login_enabled(Settings(host="0.0.0.0", dev_login="on"))
    with pytest.raises(Exception, match="dev_login must be auto, on or off"):
        Settings.load({"TIDEGATE_DEV_LOGIN": "maybe"})


async def test_root_serves_the_built_client_without_hiding_other_routes(tmp_path: Path) -> None:
    """``/`` is index.html of the web folder, assets are served, and the API routes still win."""
    web = tmp_path / "web"
    (web / "assets").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>tidegate client</title>")
    (web / "assets" / "app.js").write_text("console.log(1)")
    async with (
        run_server(make_settings(tmp_path, web_dir=web)) as live,
        httpx.AsyncClient() as http,
    ):
        root = await http.get(f"{live.http}/")
        asset = await http.get(f"{live.http}/assets/app.js")
        health = await http.get(f"{live.http}/healthz")
        missing = await http.get(f"{live.http}/nothing-here.js")
    assert root.status_code == 200 and "tidegate client" in root.text
    assert asset.status_code == 200 and asset.text == "console.log(1)"
    assert health.json() == {"status": "ok"}
    assert missing.status_code == 404


async def test_root_says_how_to_build_the_client_when_it_is_missing(tmp_path: Path) -> None:
    """Without a built client ``/`` is a page naming ``make web`` and the folder looked in."""
    web = tmp_path / "not-built"
    async with (
        run_server(make_settings(tmp_path, web_dir=web)) as live,
        httpx.AsyncClient() as http,
    ):
        root = await http.get(f"{live.http}/")
        other = await http.get(f"{live.http}/assets/x.js")
    assert root.status_code == 404
    assert "make web" in root.text and str(web) in root.text
    assert other.status_code == 404


def test_the_default_web_folder_is_the_source_trees_build() -> None:
    """Unset, the web folder is client-web/dist of this checkout (built by ``make web``)."""
    assert Path(__file__).resolve().parents[2] / "client-web" / "dist" == SOURCE_WEB_DIR
