"""One typed settings object for every app; environment variables ``PAWFINDER_*`` override the defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK = "127.0.0.1"


class Settings(BaseSettings):
    """Effective configuration. Construct it at an app's edge (CLI, job entrypoint, deployment) and pass it down."""

    model_config = SettingsConfigDict(env_prefix="PAWFINDER_", env_file=None, extra="ignore")

    # Local state
    home: Path = Field(Path(".pawfinder"), description="All local state (cache, MLflow store, logs, PIDs).")
    data_dir: Path | None = Field(None, description="Dataset root in the official layout; default <home>/data.")
    cache_dir: Path | None = Field(None, description="Prepared-image cache; default <home>/cache.")

    # Data
    dataset_urls: tuple[str, ...] = Field(
        (
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data",
            "https://thor.robots.ox.ac.uk/datasets/pets",
        ),
        description="Base URLs holding images.tar.gz and annotations.tar.gz, tried in order.",
    )
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Share of trainval held out for validation.")
    seed: int = 42
    prepare_short_side: int = Field(256, ge=32, le=2048, description="Short side of cached images.")
    workers: int = Field(0, ge=0, description="Parallel workers for data jobs; 0 = number of CPUs.")

    # Model
    backbone: str = "efficientnet_lite0"
    mobilenet_v2_weights: Path | None = Field(None, description="Local torchvision MobileNetV2 ImageNet weights file.")
    model_name: str = "pawfinder"
    promotion_tolerance: float = Field(0.005, ge=0, le=1, description="Promote gate: allowed test top-1 drop.")

    # Services (loopback by default)
    host: str = LOOPBACK
    mlflow_port: int = 5000
    mlflow_tracking_uri: str | None = Field(None, description="Default http://<host>:<mlflow_port>.")
    prefect_port: int = 4200
    ray_dashboard_port: int = 8265
    ray_port: int = Field(6379, description="GCS port of the Ray head that `pawfinder stack up` starts.")
    ray_address: str | None = Field(None, description="Ray Jobs address; default http://<host>:<ray_dashboard_port>.")
    serve_port: int = 8000
    console_port: int = 8501
    training_cron: str | None = Field(None, description="Cron schedule of the training deployment; none = manual.")
    ray_job_python: str = Field("python", description="Interpreter that runs Ray job entrypoints on the cluster.")

    # Serving
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0, description="Larger images are rejected as decompression bombs.")
    max_image_aspect_ratio: float = Field(20.0, gt=1, description="Longer/shorter side above this is rejected.")
    serve_ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description="HTTP ingress of Ray Serve: HAProxy straight to the replicas (fast) or Serve's Python proxy.",
    )
    serve_drain_s: float = Field(
        2.0, ge=0, description="HAProxy ingress: a stopping replica keeps answering this long while HAProxy drops it."
    )
    serve_model_alias: str = Field("champion", description="Registry alias the serving app follows.")
    serve_model_path: Path | None = Field(None, description="Serve this local .onnx file instead of the alias.")
    serve_poll_interval_s: float = Field(30.0, gt=0, description="How often serving checks the alias for a new model.")
    serve_max_batch_size: int = Field(16, ge=1, description="Dynamic batching: most images per ONNX Runtime call.")
    serve_batch_wait_timeout_s: float = Field(0.002, ge=0, description="Dynamic batching: longest wait to fill one.")
    serve_intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per batch run; 0 = all CPUs.")
    serve_model_replicas: int = Field(1, ge=1, description="Replicas of the serving deployment (API + model).")
    serve_model_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved per serving replica.")
    serve_access_log: bool = Field(False, description="Ray Serve access log lines (~6% CPU per image on 2 cores).")
    serve_max_files: int = Field(16, ge=1, description="Most files in one /predict/batch request.")
    serve_max_ongoing_requests: int = Field(64, ge=1, description="Concurrent requests per serving replica.")
    serve_draft_size: int = Field(512, ge=64, description="JPEGs are decoded at reduced scale down to this size.")
    serve_store_images: bool = Field(False, description="Keep uploaded images next to the prediction log.")
    prediction_store_url: str | None = Field(
        None, description="Prediction log; default sqlite:///<home>/predictions.db."
    )

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        if self.data_dir is None:
            self.data_dir = self.home / "data"
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"http://{self.host}:{self.mlflow_port}"
        if self.ray_address is None:
            self.ray_address = f"http://{self.host}:{self.ray_dashboard_port}"
        return self

    @property
    def dataset_dir(self) -> Path:
        """The dataset root (never ``None`` after validation)."""
        assert self.data_dir is not None
        return self.data_dir

    @property
    def prepared_dir(self) -> Path:
        """The prepared-image cache root (never ``None`` after validation)."""
        assert self.cache_dir is not None
        return self.cache_dir
