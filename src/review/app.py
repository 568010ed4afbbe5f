"""The review web app (Starlette): one page, a small JSON API, the dataset's images.

Every request must carry the session's token: ``?token=`` (the URL the command prints), the
``X-Podium-Token`` header (the page's API calls) or the cookie the page sets on first load (its
images). Without it the answer is 403. Routes:

- ``GET /`` the page; ``GET /static/<file>`` its script and style (served from this package);
- ``GET /api/state?reviewer=<id>`` the reviewer's image (leased to it), progress, undo;
- ``POST /api/action`` ``{reviewer, image_id, action, label}``: keep, relabel, trash, skip;
- ``POST /api/undo`` ``{reviewer}``: take back the reviewer's last action;
- ``GET /image/<image_id>`` a training image, by id only (409: another tab holds the image).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from src.core.errors import ConfigError
from src.review.images import MEDIA_TYPES, DatasetImages
from src.review.session import Conflict, ReviewSession

STATIC = Path(__file__).parent / "static"
COOKIE = "podium_review_token"
HEADER = "x-podium-token"


class TokenGate(BaseHTTPMiddleware):
    """Refuse (403) every request that does not carry the session's token."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        offered = request.query_params.get("token") or request.headers.get(HEADER) or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(offered.encode(), self.token.encode()):
            return JSONResponse({"error": "missing or wrong token: open the URL review.py printed"}, status_code=403)
        response = await call_next(request)
        if request.url.path == "/":
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response


def build_app(session: ReviewSession, images: DatasetImages, token: str) -> Starlette:
    """The app over one review session."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        return answer(lambda: session.state(reviewer_of(request.query_params.get("reviewer"))))

    async def action(request: Request) -> Response:
        body = await json_body(request)
        reviewer, image_id, what = body.get("reviewer"), str(body.get("image_id")), str(body.get("action"))
        return answer(lambda: session.act(reviewer_of(reviewer), image_id, what, body.get("label")))

    async def undo(request: Request) -> Response:
        body = await json_body(request)
        return answer(lambda: session.undo(reviewer_of(body.get("reviewer"))))

    async def image(request: Request) -> Response:
        path = images.path(request.path_params["image_id"])
        if path is None:
            return JSONResponse({"error": "no such image in the dataset"}, status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/action", action, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/image/{image_id:path}", image),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)])


def reviewer_of(value: Any) -> str:
    """The reviewer id a tab sends (a short random id it keeps for its life)."""
    text = str(value or "").strip()
    if not text or len(text) > 64:
        raise ConfigError("a request without a reviewer id", "reload the page")
    return text


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def answer(call: Any) -> Response:
    """The session's answer as JSON; a refused action as 400 (bad request) or 409 (conflict)."""
    try:
        return JSONResponse(call())
    except Conflict as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
