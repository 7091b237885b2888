"""The arena from the outside: the voting page driven in headless Chromium over the DevTools protocol (a vote
that lands in the store, on the leaderboard and in the export; videos and audio that play), ``arena serve``
as a process with its admin token, and a generator that samples on demand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmalign.arena.service import Arena
from mmalign.arena.store import ArenaError, Store
from mmalign.fileio import atomic_write_jsonl
from mmalign.media import save_media
from test_arena_store import PROMPTS, _app, _arena, make_sample_folders, servers


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory):
    return make_sample_folders(tmp_path_factory.mktemp("samples"))


@pytest.fixture
def server_factory():
    yield from servers()


# -- the page in a real browser ----------------------------------------------------------------------


def _browser() -> str | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", shutil.which("chromium") or ""):
        if name and Path(name).is_file():
            return name
    return None


class _DevTools:
    """A minimal Chrome DevTools Protocol client on one page target."""

    def __init__(self, browser: str, profile: Path) -> None:
        import websocket

        self.proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                      "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,1024", f"--user-data-dir={profile}",
                                      "--autoplay-policy=no-user-gesture-required", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            elif not line and self.proc.poll() is not None:
                break
        assert port, "Chromium did not start its DevTools endpoint"
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id, self.errors, self.events = 0, [], []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
            if msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(msg["params"]["exceptionDetails"])
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
                self.errors.append(msg["params"]["args"])
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def wait(self, expr: str, timeout: float = 60.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self._centre(selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def _centre(self, selector: str) -> list[float]:
        return self.js(f"(function(){{var e=document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                       "var r=e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];})()")

    def drag(self, source: str, target: str) -> None:
        """A real mouse drag of one element onto another (the drag is intercepted and dropped via DevTools)."""
        self.call("Input.setInterceptDrags", enabled=True)
        (x0, y0), (x1, y1) = self._centre(source), self._centre(target)
        self.events.clear()
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", clickCount=1)
        for f in (0.1, 0.5, 1.0):
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + f * (x1 - x0), y=y0 + f * (y1 - y0), button="left", buttons=1)
        data = next(e["params"]["data"] for e in self.events if e["method"] == "Input.dragIntercepted")
        for kind in ("dragEnter", "dragOver", "drop"):
            self.call("Input.dispatchDragEvent", type=kind, x=x1, y=y1, data=data)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", clickCount=1)
        self.call("Input.setInterceptDrags", enabled=False)

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait(30)


def test_page_in_headless_chromium_records_a_vote(tmp_path, sample_folders, server_factory):
    browser = _browser()
    if browser is None:
        if os.environ.get("MMALIGN_CI"):
            pytest.fail("no Chromium binary: .ci/run installs Debian's chromium (apt-get install chromium) before the tests")
        pytest.skip("no Chromium binary (/usr/bin/chromium); install Debian's chromium to run this check")
    db = str(tmp_path / "a.db")
    arena = _arena(db, sample_folders, k=4)
    srv = server_factory(arena)
    chrome = _DevTools(browser, tmp_path / "profile")
    try:
        chrome.call("Page.navigate", url=srv.url)
        chrome.wait("document.querySelectorAll('#cards .card').length === 4 && "
                    "[].every.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; })")
        match_id = chrome.js("document.body.getAttribute('data-match-id')")
        assert chrome.js("document.getElementById('prompt').textContent") in PROMPTS
        slots = lambda: chrome.js("[].map.call(document.querySelectorAll('#cards .card'), function (c) {"  # noqa: E731
                                  " return +c.getAttribute('data-slot'); })")
        assert slots() == [0, 1, 2, 3]
        chrome.click("#cards .card:nth-child(1) button.right")  # move slot 0 after slot 1
        assert slots() == [1, 0, 2, 3]
        chrome.click("#cards .card:nth-child(3) button.tie")  # slot 2 ties with slot 0
        chrome.drag("#cards .card:nth-child(4) .place", "#cards .card:nth-child(1) .place")  # slot 3 to the front
        assert slots() == [3, 1, 0, 2]
        assert chrome.js("[].map.call(document.querySelectorAll('#cards .place'), function (p) { return p.textContent; })") == [
            "place 1", "place 2", "place 3", "place 3 (tie)"]
        chrome.click("#submit")
        vote_id = int(chrome.wait("document.getElementById('status').getAttribute('data-vote-id')"))
        chrome.wait(f"document.body.getAttribute('data-match-id') !== {json.dumps(match_id)}")  # the next match is shown
        chrome.wait("document.querySelectorAll('#board tbody tr').length === 4")
        assert chrome.errors == []
    finally:
        chrome.close()
    # the vote is in the store ...
    (vote,) = Store(db).votes()
    assert (vote.id, vote.match_id, vote.ranks, vote.mode) == (vote_id, match_id, (2, 1, 2, 0), "rank")
    # ... on the leaderboard ...
    _, board = srv.request("GET", "api/leaderboard")
    assert board["votes"] == 1 and board["rows"][0]["model"] == vote.items[3].model
    assert all(r["votes"] == 1 for r in board["rows"])
    # ... and in the export
    from mmalign.arena.cli import register

    r = CliRunner().invoke(_app(register), ["arena", "export", "--db", db, "--out", str(tmp_path / "ex")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "ex" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {x["vote"] for x in rows} == {vote_id}
    assert sum(x["label"] == 0.5 for x in rows) == 1
    assert sum(x["chosen"] == vote.items[3].path for x in rows) == 3  # the best item beat the three others


def test_a_generator_samples_on_demand_for_the_match_prompt(tmp_path, sample_folders):
    from mmalign.generators import load_generator

    folders = {n: sample_folders[n] for n in ("model0", "model1")}
    arena = _arena(str(tmp_path / "a.db"), folders, k=3, prompts=["a yellow circle"], media_dir=tmp_path / "media")
    arena.add_generator("synth-sdxl", load_generator("synth-sdxl"))
    seen = set()
    for _ in range(3):
        m = arena.next_match()
        assert {it.model for it in m.items} == {"model0", "model1", "synth-sdxl"} and m.prompt in PROMPTS  # 3 models: all of them
        (gen,) = [it for it in m.items if it.model == "synth-sdxl"]
        assert Path(gen.path).is_file() and Path(gen.path).parent == tmp_path / "media" / "synth-sdxl" and gen.prompt == m.prompt
        seen.add(gen.path)
        arena.vote(m.id, [0, 1, 2])
    assert len(seen) == 3  # a fresh sample each time
    assert sum(r["votes"] for r in arena.leaderboard()) == 9
    # a prompt only generators can show is used once k generators are there
    gens = Arena(Store(str(tmp_path / "gens.db")), k=2, prompts=["a yellow circle"], media_dir=tmp_path / "media", seed=1)
    gens.add_generator("gen-a", arena.generators["synth-sdxl"][0])
    with pytest.raises(ArenaError, match="no prompt"):
        gens.next_match()
    gens.add_generator("gen-b", arena.generators["synth-sdxl"][0])
    m = gens.next_match()
    assert m.prompt == "a yellow circle" and {it.model for it in m.items} == {"gen-a", "gen-b"}


_SERVE = """
import sys, typer
from mmalign.arena.cli import register
app = typer.Typer()
app.callback()(lambda: None)
register(app)
app(sys.argv[1:])
"""


def test_serve_command_runs_a_server_with_an_admin_token(tmp_path, sample_folders):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "serve.py"
    script.write_text(_SERVE)
    models = [a for n, f in sample_folders.items() for a in ("--model", f"{n}={f}")]
    p = subprocess.Popen([sys.executable, str(script), "arena", "serve", "--db", str(tmp_path / "a.db"), "--port", str(port),
                          "--k", "2", *models], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "MMALIGN_ARENA_TOKEN": ""})
    try:
        token = None
        for line in p.stdout:
            if "admin token:" in line:
                assert f"http://127.0.0.1:{port}/" in line
                token = line.rsplit("admin token: ", 1)[1].rstrip(")\n ")
                break
        assert token and len(token) >= 16
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert b"Submit ranking" in r.read()
                break
            except urllib.error.URLError:
                assert time.time() < deadline
                time.sleep(0.2)
        req = urllib.request.Request(url + "api/admin/export", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read()) == {"rows": []}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "api/admin/export", timeout=30)
        assert e.value.code == 401
    finally:
        p.terminate()
        p.wait(30)


def test_page_plays_videos_and_audio_in_headless_chromium(tmp_path, server_factory):
    browser = _browser()
    if browser is None:
        if os.environ.get("MMALIGN_CI"):
            pytest.fail("no Chromium binary: .ci/run installs Debian's chromium (apt-get install chromium) before the tests")
        pytest.skip("no Chromium binary (/usr/bin/chromium); install Debian's chromium to run this check")
    from mmalign.synth.render import render

    arenas = {}
    for modality, prompt in (("video", "a red circle moving left"), ("audio", "a fast high melody on a square synth")):
        folders = {}
        for s in range(2):
            folder = tmp_path / modality / f"m{s}"
            (path,) = save_media(render([prompt], seed=s, modality=modality), folder, ["00000"])
            atomic_write_jsonl(folder / "manifest.jsonl", [{"file": Path(path).name, "prompt": prompt}])
            folders[f"m{s}"] = folder
        arenas[modality] = server_factory(_arena(str(tmp_path / f"{modality}.db"), folders, k=2))
    chrome = _DevTools(browser, tmp_path / "profile")
    try:
        chrome.call("Page.navigate", url=arenas["video"].url)
        chrome.wait("document.querySelectorAll('#cards video').length === 2")
        assert chrome.js("[].every.call(document.querySelectorAll('#cards video'), function (v) {"
                         " return v.autoplay && v.loop && v.muted; })")
        # both videos decode and play (the current time moves on)
        chrome.wait("[].every.call(document.querySelectorAll('#cards video'), function (v) {"
                    " return !v.paused && v.readyState >= 2 && v.currentTime > 0 && !v.error; })", timeout=30)
        chrome.click("#cards .card:nth-child(2) button.best")
        chrome.wait("document.getElementById('status').getAttribute('data-vote-id') === '1'")
        chrome.call("Page.navigate", url=arenas["audio"].url)
        chrome.wait("document.querySelectorAll('#cards audio').length === 2")
        chrome.wait("[].every.call(document.querySelectorAll('#cards audio'), function (a) {"
                    " return a.controls && a.loop && a.readyState >= 1 && a.duration > 0 && !a.error; })", timeout=30)
        assert chrome.errors == []
    finally:
        chrome.close()
    (vote,) = Store(str(tmp_path / "video.db")).votes()
    assert vote.mode == "best" and vote.ranks == (1, 0)
