"""The HTTP API (FastAPI): /predict, /predict/batch, /feedback, /breeds, /healthz, /readyz, /metrics, /docs.

``create_api`` builds the app around a :class:`ClassifierBackend`; in production that is the Ray Serve deployment
itself (see ``serve.app``), but any object with the two coroutines works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field, field_validator

from pawfinder.breeds import BREEDS, NUM_CLASSES, by_label
from pawfinder.prediction_store import BackgroundWriter, PredictionRecord, UnknownPredictionError, project_embedding
from pawfinder.settings import Settings
from serve.inputs import InputRejected, Upload, UploadedImage, decode_upload, read_files
from serve.metrics import MetricsMiddleware, ServeMetrics
from serve.runtime import ModelAnswer, ModelNotReadyError

logger = logging.getLogger(__name__)


def _multipart_doc(field: str, schema: dict[str, object]) -> dict[str, object]:
    """OpenAPI request body for a multipart form with one required ``field`` (the routes read the body themselves)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [field], "properties": {field: schema}}
                }
            },
        }
    }


_PHOTO_SCHEMA = {"type": "string", "format": "binary", "description": "A photo."}
_MULTIPART_DOC = _multipart_doc("file", _PHOTO_SCHEMA)
_MULTIPART_BATCH_DOC = _multipart_doc("files", {"type": "array", "items": {"type": "string", "format": "binary"}})


TopK = Annotated[int, Query(ge=1, le=NUM_CLASSES, description="How many ranked breeds to return.")]


class ClassifierBackend(Protocol):
    """The model side of the API."""

    async def predict(self, image: Image.Image, top_k: int) -> ModelAnswer:
        """Classify one image (raises :class:`ModelNotReadyError` before a model is loaded)."""
        ...

    async def model_info(self) -> dict[str, Any] | None:
        """Name, version and settings of the loaded model, or ``None``."""
        ...


class BreedChoice(BaseModel):
    label: str
    breed: str
    species: str
    confidence: float


class ModelVersion(BaseModel):
    name: str
    version: str


class PredictionOut(BaseModel):
    label: str = Field(description="Dataset class name, e.g. 'american_bulldog'.")
    breed: str
    species: str
    confidence: float = Field(description="Calibrated probability of the top label.")
    is_pet: bool = Field(description="False when the photo looks out of distribution (probably not a cat or dog).")
    top_k: list[BreedChoice]
    model: ModelVersion
    prediction_id: str


class FileResult(BaseModel):
    filename: str
    status: int = Field(description="200, or the 4xx this file alone would have received.")
    prediction: PredictionOut | None = None
    reason: str | None = None
    detail: str | None = None


class BatchOut(BaseModel):
    results: list[FileResult]


class FeedbackIn(BaseModel):
    prediction_id: str = Field(min_length=1, max_length=64)
    label: str = Field(description="The true breed, as a dataset label (see GET /breeds).")

    @field_validator("label")
    @classmethod
    def _known_breed(cls, label: str) -> str:
        try:
            by_label(label)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        return label


def create_api(
    backend: ClassifierBackend, settings: Settings, writer: BackgroundWriter, metrics: ServeMetrics
) -> FastAPI:
    """The FastAPI app; ``writer`` receives one record per answered image and is closed on shutdown."""

    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        yield
        await run_in_threadpool(writer.close)

    api = FastAPI(
        title="PawFinder",
        description="Names the breed of a cat or dog (37 Oxford-IIIT Pet breeds) from one photo.",
        version="1",
        lifespan=lifespan,
    )
    api.add_middleware(MetricsMiddleware, metrics=metrics)

    @api.exception_handler(InputRejected)
    async def _rejected(_: Request, err: InputRejected) -> JSONResponse:
        metrics.rejected.labels(err.reason).inc()
        return JSONResponse({"detail": err.detail, "reason": err.reason}, status_code=err.status)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        metrics.rejected.labels("invalid_parameters").inc()
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"detail": problems, "reason": "invalid_parameters"}, status_code=422)

    @api.exception_handler(ModelNotReadyError)
    async def _not_ready(_: Request, err: ModelNotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "10"})

    async def classify(upload: UploadedImage, top_k: int, started: float) -> PredictionOut:
        answer = await backend.predict(upload.image, top_k)
        prediction = answer.prediction
        metrics.set_model(answer.model_name, answer.model_version)
        metrics.batch_size.observe(answer.batch_size)
        metrics.predictions.labels(str(prediction.is_pet).lower()).inc()
        record = PredictionRecord(
            model_name=answer.model_name,
            model_version=answer.model_version,
            label=prediction.label,
            confidence=prediction.confidence,
            top_k=prediction.top_k,
            is_pet=prediction.is_pet,
            ood_score=prediction.ood_score,
            image_sha256=upload.sha256,
            image_bytes=upload.num_bytes,
            image_format=upload.format,
            image_width=upload.width,
            image_height=upload.height,
            latency_ms=(time.perf_counter() - started) * 1000,
            embedding=project_embedding(prediction.embedding),
            image=upload.data if settings.serve_store_images else None,
        )
        writer.submit(record)
        return PredictionOut(
            label=prediction.label,
            breed=prediction.breed,
            species=prediction.species,
            confidence=prediction.confidence,
            is_pet=prediction.is_pet,
            top_k=[BreedChoice(**entry) for entry in prediction.top_k],
            model=ModelVersion(name=answer.model_name, version=answer.model_version),
            prediction_id=record.prediction_id,
        )

    @api.post("/predict", response_model=PredictionOut, openapi_extra=_MULTIPART_DOC)
    async def predict(request: Request, top_k: TopK = 3) -> PredictionOut:
        """Classify one photo posted as multipart form field ``file``."""
        started = time.perf_counter()
        (upload,) = await read_files(request, field="file", max_bytes=settings.max_upload_bytes, max_files=1)
        image = await run_in_threadpool(decode_upload, upload, settings)
        return await classify(image, top_k, started)

    @api.post("/predict/batch", response_model=BatchOut, openapi_extra=_MULTIPART_BATCH_DOC)
    async def predict_batch(request: Request, top_k: TopK = 3) -> BatchOut:
        """Classify several photos (form field ``files``, repeated); each file gets its own result or error."""
        started = time.perf_counter()
        uploads = await read_files(
            request, field="files", max_bytes=settings.max_upload_bytes, max_files=settings.serve_max_files
        )

        async def one(upload: Upload) -> FileResult:
            try:
                image = await run_in_threadpool(decode_upload, upload, settings)
            except InputRejected as err:
                metrics.rejected.labels(err.reason).inc()
                return FileResult(filename=upload.filename, status=err.status, reason=err.reason, detail=err.detail)
            prediction = await classify(image, top_k, started)
            return FileResult(filename=upload.filename, status=200, prediction=prediction)

        return BatchOut(results=list(await asyncio.gather(*(one(upload) for upload in uploads))))

    @api.post("/feedback", status_code=201)
    async def feedback(body: FeedbackIn) -> dict[str, str]:
        """Record the true breed of an earlier prediction (for monitoring and retraining)."""
        await run_in_threadpool(writer.flush)  # the prediction may still be queued for the log
        try:
            await run_in_threadpool(writer.store.add_feedback, body.prediction_id, body.label)
        except UnknownPredictionError:
            raise InputRejected(404, "unknown_prediction", f"no prediction with id {body.prediction_id!r}") from None
        return {"prediction_id": body.prediction_id, "label": body.label, "status": "recorded"}

    @api.get("/breeds")
    async def breeds() -> list[dict[str, Any]]:
        """The 37 breeds the model knows, in model output order."""
        return [{"label": b.label, "breed": b.name, "species": b.species, "class_id": b.class_id} for b in BREEDS]

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the API process answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: a model is loaded (503 until then); reports its name and version."""
        info = await backend.model_info()
        if info is None:
            return JSONResponse({"ready": False, "detail": "no model loaded yet"}, status_code=503)
        metrics.set_model(str(info["name"]), str(info["version"]))
        return JSONResponse({"ready": True, "model": info})

    @api.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return api
