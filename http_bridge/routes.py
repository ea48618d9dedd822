"""The old REST API, endpoint for endpoint (see the seed README and API-FACTS).

Answer shapes are the old ones: `/load`, `/detect` and `/get_labels` answer bare
objects, the `/models/...` endpoints the `{success, data, error}` envelope.
Wherever a model name goes, its hash works too.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from consumer.protocol import ModelFacts, ModelState
from engines.drawing import draw_boxes
from engines.errors import ModelLoading, TfstreamError
from engines.images import decode_image
from http_bridge.backends import Backend, DetectCall
from http_bridge.errors import RETRY_AFTER_S, envelope, error_entry

router = APIRouter()

Confidence = Annotated[
    float | None,
    Form(
        ge=0, le=100, description="Minimum confidence in percent; default: the model's config.json"
    ),
]
Predictions = Annotated[
    int | None,
    Form(ge=0, le=10_000, description="Maximum number of boxes; default: the model's config.json"),
]


def backend(request: Request) -> Backend:
    return request.app.state.backend  # type: ignore[no-any-return]


def described(b: Backend, model: str) -> ModelFacts:
    """The facts of a model whose labels and config can be answered: a model still
    loading (no weights serving anywhere yet) is 503 `model_loading`, retryable, not
    an answer with empty labels that a client would take as the truth.

    Raises:
        ModelNotFound, ModelUnavailable, ModelLoading: see `Backend.info`.
    """
    facts = b.info(b.resolve(model))
    if facts.state is ModelState.LOADING:
        raise ModelLoading(f"model '{facts.name}' is still loading; try again in a few seconds")
    return facts


#: Response header naming the version of the weights that answered (the bodies of the
#: old endpoints keep their shape; Kafka answers carry it as `model_version`).
MODEL_VERSION_HEADER = "Model-Version"


async def _detect(
    request: Request,
    model: str,
    upload: UploadFile,
    confidence: float | None,
    predictions: int | None,
    response: Response | None = None,
) -> tuple[str, bytes, dict[str, Any]]:
    b = backend(request)
    name = b.resolve(model)
    data = await upload.read()
    result = await b.detect(DetectCall(name, data, upload.filename, confidence, predictions))
    version = result.get("model_version")
    if response is not None and version is not None:
        response.headers[MODEL_VERSION_HEADER] = str(version)
    return name, data, result


# -- the old custom endpoints (bare answers) ---------------------------------------


@router.get("/load", summary="Load every model; answer {name: hash}")
async def load_all(request: Request) -> dict[str, str]:
    b = backend(request)
    await b.load(None)
    hashes: dict[str, str] = {}
    for name in b.names():
        try:
            hashes[name] = b.info(name).hash
        except TfstreamError:  # a folder too broken to describe (no config): not a model
            continue
    return hashes


@router.post("/detect", summary="Detect objects; answer {bounding-boxes: [...]}")
async def detect(
    request: Request,
    response: Response,
    model: Annotated[str, Form(description="Model name or hash")],
    image: Annotated[UploadFile, File(description="The image")],
    confidence: Confidence = None,
    predictions: Predictions = None,
) -> dict[str, Any]:
    _, _, result = await _detect(request, model, image, confidence, predictions, response)
    return {"bounding-boxes": result["bounding-boxes"]}


@router.post("/get_labels", summary="A model's labels; answer {label: label hash}")
async def get_labels(
    request: Request, model: Annotated[str, Form(description="Model name or hash")]
) -> dict[str, str]:
    return described(backend(request), model).label_hashes


# -- /models (enveloped answers) --------------------------------------------------------


@router.get("/models", summary="List the models, with the version serving each")
async def list_models(request: Request) -> JSONResponse:
    """`data.models` as the old API answered; `data.versions` beside it: per model, the
    version serving and the fingerprint of its weights; for a model still loading,
    version 0 with `code` "model_loading", `error` and `retryable`, and the answer
    carries `Retry-After`."""
    b = backend(request)
    names = b.names()
    versions: dict[str, dict[str, Any]] = {}
    loading = False
    for name in names:
        try:
            info = described(b, name)
        except ModelLoading as exc:  # listed, with the error a call to it would answer now
            loading = True
            versions[name] = {"version": 0, "fingerprint": "", **error_entry(exc)}
            continue
        except TfstreamError:  # too broken to describe: listed, without a version
            continue
        versions[name] = {"version": info.version, "fingerprint": info.fingerprint}
    body = envelope({"models": names, "versions": versions})
    # The list itself is an answer; Retry-After says when to look again for the rest.
    return JSONResponse(body, headers={"Retry-After": RETRY_AFTER_S} if loading else None)


@router.get("/models/{model_name}/load", summary="Load a model (force: reload it)")
async def load_model(
    request: Request, model_name: str, force: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    b = backend(request)
    await b.load(b.resolve(model_name), force)
    return envelope(None)


@router.post("/models/{model_name}/predict", summary="Detect objects in one image")
async def predict(
    request: Request,
    response: Response,
    model_name: str,
    input_data: Annotated[UploadFile, File(description="The image")],
    confidence: Confidence = None,
    predictions: Predictions = None,
) -> dict[str, Any]:
    _, _, result = await _detect(request, model_name, input_data, confidence, predictions, response)
    return envelope({"bounding-boxes": result["bounding-boxes"]})


@router.post("/models/{model_name}/predict_batch", summary="Detect objects in several images")
async def predict_batch(
    request: Request,
    model_name: str,
    input_data: Annotated[list[UploadFile], File(description="The images")],
    confidence: Confidence = None,
    predictions: Predictions = None,
) -> dict[str, Any]:
    results = await asyncio.gather(
        *(_detect(request, model_name, f, confidence, predictions) for f in input_data)
    )
    return envelope(
        [
            {"bounding-boxes": r["bounding-boxes"], "ImageName": f.filename}
            for (_, _, r), f in zip(results, input_data, strict=True)
        ]
    )


@router.post(
    "/models/{model_name}/predict_image",
    summary="Detect objects and answer the image with boxes drawn (JPEG)",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The image with boxes and labels"}
    },
)
async def predict_image(
    request: Request,
    model_name: str,
    input_data: Annotated[UploadFile, File(description="The image")],
    confidence: Confidence = None,
    predictions: Predictions = None,
) -> Response:
    _, data, result = await _detect(request, model_name, input_data, confidence, predictions)
    limits = request.app.state.settings.decode_limits()

    def render() -> bytes:
        return draw_boxes(decode_image(data, limits), result["bounding-boxes"])

    return Response(await asyncio.to_thread(render), media_type="image/jpeg")


@router.get("/models/{model_name}/labels", summary="A model's labels")
async def labels(request: Request, model_name: str) -> dict[str, Any]:
    return envelope(described(backend(request), model_name).labels)


@router.get("/models/{model_name}/config", summary="A model's configuration")
async def config(request: Request, model_name: str) -> dict[str, Any]:
    cfg = described(backend(request), model_name).config
    return envelope({key: cfg.get(key) for key in ("framework", "type", "network")})


# -- operations ----------------------------------------------------------------------------


@router.get(
    "/health/live",
    summary="The process is up and none of its background tasks died",
    tags=["operations"],
)
async def live(request: Request) -> JSONResponse:
    supervisor = getattr(request.app.state, "supervisor", None)
    failed = dict(supervisor.failed) if supervisor is not None else {}
    if failed:
        return JSONResponse({"status": "unavailable", "failed_tasks": failed}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/health/ready",
    summary="Ready to serve: broker reachable and models announced, or embedded models loaded",
    tags=["operations"],
)
async def ready(request: Request) -> JSONResponse:
    ok, detail = await backend(request).ready()
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", **detail}, status_code=200 if ok else 503
    )
