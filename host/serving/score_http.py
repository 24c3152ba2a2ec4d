"""Raw image scoring over HTTP: ``POST /score[/{model}[/versions/{version}]]?top=5`` with the image as the body."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mvu.host.serving.envelope import Endpoint
from mvu.host.serving.errors import ServingError
from mvu.host.serving.http_io import BodyReader, HttpRoute, json_response, path_model
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.tensors import server_timing

__all__ = ["ScoreHttp"]


class ScoreHttp:
    """The ``/score`` endpoints for one :class:`ModelRepository`."""

    protocol = "score"

    def __init__(self, repository: ModelRepository, read_body: BodyReader):
        self.repository, self.read_body = repository, read_body

    def routes(self) -> list[HttpRoute]:
        endpoint = Endpoint("score", self.score)
        return [HttpRoute(path, endpoint, ("POST",))
                for path in ("/score", "/score/{name}", "/score/{name}/versions/{version}")]

    async def score(self, request: Request) -> Response:
        name = path_model(self.repository, request).name if "name" in request.path_params \
            else self.repository.only().name  # a 404 before the body
        version = request.path_params.get("version")
        image, top = await self.read_body(request), _top(request.query_params.get("top", "5"))
        answer = await self.repository.get(name, version).score_image(image, top)  # the version ready now
        return json_response(answer, headers={"Server-Timing": server_timing(answer["timings_ms"])})


def _top(text: str) -> int:
    """The ``top`` query parameter: ASCII digits only (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ServingError(400, f"top must be a positive integer, not {text[:20]!r}")
    return int(text)
