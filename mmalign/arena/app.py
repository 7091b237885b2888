"""The arena's web server (Flask): one plain HTML/JS page and a small JSON API.

Routes (JSON unless noted):

* ``GET /`` — the voting page (``page.html``; no build step, no external resources);
* ``POST /api/match`` — a new match: ``{match_id, prompt, k, expires_at, items: [{slot, url, modality}]}``;
  the models behind the items are not revealed and their order is shuffled;
* ``GET /media/<match_id>/<slot>`` — the media file shown in a slot of a match;
* ``POST /api/vote`` ``{match_id, ranks, mode}`` — ``ranks[slot]`` = tier (0 = best, equal = tie), ``mode``
  ``"rank"`` or ``"best"``; 201 ``{vote_id}``; 400 malformed, 404 unknown match, 409 already voted,
  410 expired;
* ``GET /api/leaderboard`` — ``{rows: [{rank, model, mu, sigma, score, votes, comparisons, elo, bt}]}``;
* admin, with ``Authorization: Bearer <token>``: ``POST /api/admin/models`` ``{name, folder}`` and
  ``GET /api/admin/export?format=pairs|rankings`` (the JSONL rows :mod:`mmalign.arena.export` writes).
"""

from __future__ import annotations

import hmac
import secrets
from importlib import resources
from typing import Any

from flask import Flask, Response, jsonify, request, send_file

from mmalign.arena.export import export_rows
from mmalign.arena.service import Arena
from mmalign.arena.store import ArenaError, UnknownMatch


def create_app(arena: Arena, token: str) -> Flask:
    """The Flask app over ``arena``; admin routes need ``token``."""
    if len(token) < 16:
        raise ArenaError("the admin token must have at least 16 characters")
    app = Flask("mmalign.arena")
    page = resources.files("mmalign.arena").joinpath("page.html").read_text(encoding="utf-8")

    @app.errorhandler(ArenaError)
    def _arena_error(e: ArenaError) -> tuple[Response, int]:
        return jsonify(error=str(e)), e.status

    @app.errorhandler(404)
    def _not_found(_e: Any) -> tuple[Response, int]:
        return jsonify(error="no such route"), 404

    @app.errorhandler(405)
    def _bad_method(_e: Any) -> tuple[Response, int]:
        return jsonify(error="method not allowed on this route"), 405

    def _json_object() -> dict:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ArenaError("send a JSON object with Content-Type: application/json")
        return body

    def _admin() -> None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            e = ArenaError("admin action: send the server's token as 'Authorization: Bearer TOKEN'")
            e.status = 401
            raise e

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.post("/api/match")
    def new_match() -> Response:
        m = arena.next_match()
        return jsonify(match_id=m.id, prompt=m.prompt, k=len(m.items), expires_at=m.expires_at,
                       items=[{"slot": i, "url": f"media/{m.id}/{i}", "modality": it.modality} for i, it in enumerate(m.items)])

    @app.get("/media/<match_id>/<int:slot>")
    def media(match_id: str, slot: int) -> Response:
        m = arena.store.match(match_id)
        if not 0 <= slot < len(m.items):
            raise UnknownMatch(f"match {match_id} has no slot {slot}")
        return send_file(m.items[slot].path, max_age=0)

    @app.post("/api/vote")
    def vote() -> tuple[Response, int]:
        body = _json_object()
        unknown = set(body) - {"match_id", "ranks", "mode", "voter"}
        if unknown:
            raise ArenaError(f"unknown field(s) {sorted(unknown)}; send match_id, ranks, mode (and optionally voter)")
        voter = body.get("voter")
        if voter is not None and (not isinstance(voter, str) or len(voter) > 200):
            raise ArenaError("voter must be a string of at most 200 characters")
        vote_id = arena.vote(body.get("match_id"), body.get("ranks"), body.get("mode", "rank"), voter)
        return jsonify(vote_id=vote_id), 201

    @app.get("/api/leaderboard")
    def board() -> Response:
        return jsonify(rows=arena.leaderboard(), votes=arena.store.count_votes())

    @app.post("/api/admin/models")
    def add_model() -> tuple[Response, int]:
        _admin()
        body = _json_object()
        if not isinstance(body.get("name"), str) or not isinstance(body.get("folder"), str):
            raise ArenaError("send {name, folder}: a model name and a `mmalign sample` folder on the server")
        return jsonify(added=arena.add_model(body["name"], body["folder"])), 201

    @app.get("/api/admin/export")
    def export() -> Response:
        _admin()
        rows = export_rows(arena.store.votes(), request.args.get("format", "pairs"), ties=request.args.get("ties", "keep"))
        return jsonify(rows=rows)

    return app


def serve(arena: Arena, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    """Run the server (threaded) until interrupted; prints the URL and the admin token."""
    from werkzeug.serving import run_simple

    token = token or secrets.token_urlsafe(24)
    print(f"mmalign arena on http://{host}:{port}/  (admin token: {token})", flush=True)
    run_simple(host, port, create_app(arena, token), threaded=True)


__all__ = ["create_app", "serve"]
