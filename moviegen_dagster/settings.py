"""One typed settings class for every MovieGen process, read from the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ModelProfile = Literal["tiny", "gpu"]
WorkerType = Literal["gpu_heavy", "gpu_light"]

# Which worker type (and so which Celery queue) runs each task type.
WORKER_TYPE_BY_TASK: dict[str, WorkerType] = {
    "generate_video": "gpu_heavy",
    "generate_image": "gpu_light",
    "process_audio": "gpu_light",
}
# Which media asset each task type materializes (its job selects exactly that asset).
ASSET_BY_TASK_TYPE: dict[str, str] = {
    "generate_video": "scene_video",
    "generate_image": "character_image",
    "process_audio": "dialogue_audio",
}


class Settings(BaseSettings):
    """Configuration of the API, the Dagster processes and the workers (see README's table)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Where the embedded stack keeps its state (database files, sockets, media, DAGSTER_HOME).
    moviegen_home: Path = Field(default=Path(".var"), alias="MOVIEGEN_HOME")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")

    api_host: str = Field(default="127.0.0.1", alias="MOVIEGEN_API_HOST")
    api_port: int = Field(default=8001, alias="MOVIEGEN_API_PORT")
    dagster_host: str = Field(default="127.0.0.1", alias="MOVIEGEN_DAGSTER_HOST")
    dagster_port: int = Field(default=3000, alias="MOVIEGEN_DAGSTER_PORT")
    public_base_url: str | None = Field(default=None, alias="MOVIEGEN_PUBLIC_BASE_URL")

    api_keys: SecretStr = Field(default=SecretStr(""), alias="MOVIEGEN_API_KEYS")
    admin_key: SecretStr | None = Field(default=None, alias="MOVIEGEN_ADMIN_KEY")

    # "gpu_heavy=1,gpu_light=1": worker slots per worker type; each slot is one prefork child.
    workers: str = Field(default="gpu_heavy=1,gpu_light=1", alias="MOVIEGEN_WORKERS")
    model_profile: ModelProfile = Field(default="tiny", alias="MOVIEGEN_MODEL_PROFILE")
    models_dir: Path | None = Field(default=None, alias="MOVIEGEN_MODELS_DIR")
    image_model: str | None = Field(default=None, alias="MOVIEGEN_IMAGE_MODEL")
    image_model_revision: str | None = Field(default=None, alias="MOVIEGEN_IMAGE_MODEL_REVISION")
    image_steps: int = Field(default=0, alias="MOVIEGEN_IMAGE_STEPS", ge=0, le=200)
    tts_model: str | None = Field(default=None, alias="MOVIEGEN_TTS_MODEL")
    tts_model_revision: str | None = Field(default=None, alias="MOVIEGEN_TTS_MODEL_REVISION")
    ambience_model: str | None = Field(default=None, alias="MOVIEGEN_AMBIENCE_MODEL")
    ambience_model_revision: str | None = Field(
        default=None, alias="MOVIEGEN_AMBIENCE_MODEL_REVISION"
    )
    ambience_steps: int = Field(default=0, alias="MOVIEGEN_AMBIENCE_STEPS", ge=0, le=200)
    video_model: str | None = Field(default=None, alias="MOVIEGEN_VIDEO_MODEL")
    video_model_revision: str | None = Field(default=None, alias="MOVIEGEN_VIDEO_MODEL_REVISION")
    video_steps: int = Field(default=0, alias="MOVIEGEN_VIDEO_STEPS", ge=0, le=200)
    video_gen_size: str = Field(default="", alias="MOVIEGEN_VIDEO_GEN_SIZE")
    # Threads per worker slot for torch on CPU (0: torch's default). Tiny models on a small
    # CPU run several times faster on one thread than on two fighting over tiny kernels.
    torch_threads: int = Field(default=0, alias="MOVIEGEN_TORCH_THREADS", ge=0)
    device: str = Field(default="cpu", alias="MOVIEGEN_DEVICE")
    dtype: str = Field(default="float32", alias="MOVIEGEN_DTYPE")
    # gpu_light slots serve image, TTS and ambience pipelines: keep all three resident.
    model_pool_size: int = Field(default=3, alias="MOVIEGEN_MODEL_POOL_SIZE", ge=1)

    media_dir: Path | None = Field(default=None, alias="MOVIEGEN_MEDIA_DIR")
    staging_dir: Path | None = Field(default=None, alias="MOVIEGEN_STAGING_DIR")

    # URL inputs: private/loopback hosts are refused unless listed (hosts or CIDRs).
    url_allowlist: str = Field(default="", alias="MOVIEGEN_URL_ALLOWLIST")
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, alias="MOVIEGEN_FETCH_MAX_BYTES")
    fetch_timeout_seconds: float = Field(default=30.0, alias="MOVIEGEN_FETCH_TIMEOUT_SECONDS")

    # Cloudflare R2 (S3 API): used instead of the local store when the first four are set.
    r2_endpoint_url: str | None = Field(default=None, alias="R2_ENDPOINT_URL")
    r2_bucket: str | None = Field(default=None, alias="R2_BUCKET")
    r2_access_key_id: SecretStr | None = Field(default=None, alias="R2_ACCESS_KEY_ID")
    r2_secret_access_key: SecretStr | None = Field(default=None, alias="R2_SECRET_ACCESS_KEY")
    r2_public_base_url: str | None = Field(default=None, alias="R2_PUBLIC_BASE_URL")
    r2_region: str = Field(default="auto", alias="R2_REGION")
    # Without a public base URL, media URLs are presigned afresh on every read, valid this long.
    r2_presign_seconds: int = Field(
        default=3600, ge=60, le=604800, alias="MOVIEGEN_R2_PRESIGN_SECONDS"
    )

    # PayloadCMS registration of every completed take (skipped unless URL and key are set).
    payload_url: str | None = Field(default=None, alias="PAYLOAD_URL")
    payload_api_key: SecretStr | None = Field(default=None, alias="PAYLOAD_API_KEY")
    payload_media_collection: str = Field(default="media", alias="PAYLOAD_MEDIA_COLLECTION")
    payload_auth_collection: str = Field(default="users", alias="PAYLOAD_AUTH_COLLECTION")
    payload_media_mode: Literal["url", "upload"] = Field(default="url", alias="PAYLOAD_MEDIA_MODE")

    # Standard Webhooks signing secret ("whsec_..."); `make up` generates one when unset.
    webhook_signing_secret: SecretStr | None = Field(default=None, alias="WEBHOOK_SIGNING_SECRET")
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, alias="MOVIEGEN_WEBHOOK_TIMEOUT_SECONDS"
    )

    max_body_bytes: int = Field(default=1_048_576, alias="MOVIEGEN_MAX_BODY_BYTES")
    max_metadata_bytes: int = Field(default=16_384, alias="MOVIEGEN_MAX_METADATA_BYTES")

    # Dispatch: the reconcile sensor adopts tasks the API's fast path left without a run.
    reconcile_after_seconds: float = Field(default=10.0, alias="MOVIEGEN_RECONCILE_AFTER_SECONDS")
    dequeue_interval_seconds: int = Field(
        default=0, ge=0, alias="MOVIEGEN_DEQUEUE_INTERVAL_SECONDS"
    )
    heartbeat_seconds: float = Field(default=2.0, alias="MOVIEGEN_HEARTBEAT_SECONDS")
    # A worker silent for this long is dead: its run is failed and retried.
    worker_dead_after_seconds: float = Field(
        default=15.0, alias="MOVIEGEN_WORKER_DEAD_AFTER_SECONDS"
    )
    run_max_retries: int = Field(default=2, alias="MOVIEGEN_RUN_MAX_RETRIES", ge=0, le=10)
    # How long Dagster's processes wait for an unreachable database before an operation fails.
    db_outage_patience_seconds: float = Field(
        default=60.0, ge=0, alias="MOVIEGEN_DB_OUTAGE_PATIENCE_SECONDS"
    )
    max_runtime_image_seconds: int = Field(default=1800, alias="MOVIEGEN_MAX_RUNTIME_IMAGE")
    max_runtime_video_seconds: int = Field(default=7200, alias="MOVIEGEN_MAX_RUNTIME_VIDEO")
    max_runtime_audio_seconds: int = Field(default=1800, alias="MOVIEGEN_MAX_RUNTIME_AUDIO")

    # Dagster UI access: the webserver has no login of its own. Read-only serves the UI with
    # every mutation (launch, terminate, re-execute, sensor toggles) refused; the API then gets
    # a writable webserver of its own on loopback (see docs/production.md).
    dagster_read_only: bool = Field(default=False, alias="MOVIEGEN_DAGSTER_READ_ONLY")

    # Reliability: out-of-memory retries inside one run (op retries), each waiting
    # base * 2^(n-1) seconds (capped, +-jitter) and running in low-memory mode.
    oom_max_retries: int = Field(default=2, alias="MOVIEGEN_OOM_MAX_RETRIES", ge=0, le=10)
    oom_retry_base_seconds: float = Field(
        default=2.0, alias="MOVIEGEN_OOM_RETRY_BASE_SECONDS", ge=0, le=600
    )
    oom_retry_max_seconds: float = Field(
        default=60.0, alias="MOVIEGEN_OOM_RETRY_MAX_SECONDS", ge=0, le=3600
    )
    oom_retry_jitter: float = Field(default=0.25, alias="MOVIEGEN_OOM_RETRY_JITTER", ge=0, le=1)

    # Live progress and operations tools: SSE streams, /metrics, logs.
    # An open event stream re-syncs its task with Dagster this often (notifications carry
    # progress at once; terminal states appear only after a sync).
    events_refresh_seconds: float = Field(
        default=2.0, gt=0, le=60, alias="MOVIEGEN_EVENTS_REFRESH_SECONDS"
    )
    metrics_enabled: bool = Field(default=True, alias="MOVIEGEN_METRICS_ENABLED")
    log_format: Literal["json", "text"] = Field(default="text", alias="MOVIEGEN_LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="MOVIEGEN_LOG_LEVEL"
    )

    # API guards: Idempotency-Key records, per-project submit limits, retention (0 disables).
    idempotency_ttl_hours: float = Field(default=24.0, gt=0, alias="MOVIEGEN_IDEMPOTENCY_TTL_HOURS")
    submit_rate_per_minute: float = Field(
        default=120.0, ge=0, alias="MOVIEGEN_SUBMIT_RATE_PER_MINUTE"
    )
    submit_burst: int = Field(default=60, ge=1, alias="MOVIEGEN_SUBMIT_BURST")
    max_queued_per_project: int = Field(default=1000, ge=0, alias="MOVIEGEN_MAX_QUEUED_PER_PROJECT")
    outbox_retention_days: float = Field(default=7.0, gt=0, alias="MOVIEGEN_OUTBOX_RETENTION_DAYS")
    # Previews of finished tasks (the take's Dagster metadata keeps its own copy).
    preview_retention_days: float = Field(
        default=30.0, gt=0, alias="MOVIEGEN_PREVIEW_RETENTION_DAYS"
    )

    # Backfills: a schedule re-materializing missing/failed/stale partitions per project.
    # Empty cron: no schedule. Projects: a comma list or "*" (every project with tasks).
    backfill_cron: str = Field(default="", alias="MOVIEGEN_BACKFILL_CRON")
    backfill_projects: str = Field(default="*", alias="MOVIEGEN_BACKFILL_PROJECTS")
    backfill_reasons: str = Field(default="missing,failed", alias="MOVIEGEN_BACKFILL_REASONS")

    # Fault injection for tests only (see faults.py): "1" arms the FAULT_* markers.
    fault_injection: bool = Field(default=False, alias="MOVIEGEN_FAULT_INJECTION")

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: str) -> str:
        parse_workers(value)
        return value

    @property
    def r2_configured(self) -> bool:
        """Whether media go to R2 (all four R2 connection settings are present)."""
        return bool(
            self.r2_endpoint_url
            and self.r2_bucket
            and self.r2_access_key_id
            and self.r2_secret_access_key
        )

    @property
    def home(self) -> Path:
        """Absolute state directory."""
        return self.moviegen_home.resolve()

    @property
    def dagster_home(self) -> Path:
        """DAGSTER_HOME of every process of this stack."""
        return self.home / "dagster"

    @property
    def media_root(self) -> Path:
        """Local media store root (embedded default)."""
        return (self.media_dir or self.home / "media").resolve()

    @property
    def staging_root(self) -> Path:
        """Generated media waiting for delivery (a shared volume when workers span hosts)."""
        return (self.staging_dir or self.home / "staging").resolve()

    @property
    def model_root(self) -> Path:
        """Directory holding locally built or downloaded model weights."""
        return (self.models_dir or self.home / "models").resolve()

    @property
    def worker_slots(self) -> dict[str, int]:
        """Worker slots per worker type."""
        return parse_workers(self.workers)

    @property
    def api_base_url(self) -> str:
        """Base URL under which clients reach the API (media URLs are built on it)."""
        return (self.public_base_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def dagster_url(self) -> str:
        """Base URL of dagster-webserver (UI and GraphQL)."""
        return f"http://{self.dagster_host}:{self.dagster_port}"

    def require_database_url(self) -> str:
        """The PostgreSQL URL: DATABASE_URL, else the running embedded server's socket."""
        if self.database_url:
            return self.database_url
        pgdata = self.home / "pg"
        if (pgdata / "postmaster.pid").exists():
            return f"postgresql://postgres:@/postgres?host={pgdata}"
        raise RuntimeError("DATABASE_URL is not set and no embedded stack runs; run `make up`")

    def require_redis_url(self) -> str:
        """The Redis URL (the embedded stack exports it before starting processes)."""
        if not self.redis_url:
            raise RuntimeError("REDIS_URL is not set; start the stack with `make up`")
        return self.redis_url

    def image_model_ref(self) -> str:
        """Model id or local path of the image pipeline for the active profile."""
        if self.image_model:
            return self.image_model
        if self.model_profile == "tiny":
            return str(self.model_root / "tiny-image")
        return "black-forest-labs/FLUX.2-klein-4B"

    def tts_model_ref(self) -> str:
        """Text-to-speech model (zero-shot voice cloning) for the active profile."""
        if self.tts_model:
            return self.tts_model
        if self.model_profile == "tiny":
            return str(self.model_root / "tiny-tts")
        # The transformers-format conversion of Kyutai Pocket TTS (transformers docs checkpoint).
        return "eustlb/pocket-tts"

    def ambience_model_ref(self) -> str:
        """Text-to-audio model for ambience and audio cues for the active profile."""
        if self.ambience_model:
            return self.ambience_model
        if self.model_profile == "tiny":
            return str(self.model_root / "tiny-ambience")
        return "stabilityai/stable-audio-open-1.0"

    def video_model_ref(self) -> str:
        """Storyboard-to-video model (with its own soundtrack) for the active profile."""
        if self.video_model:
            return self.video_model
        if self.model_profile == "tiny":
            return str(self.model_root / "tiny-video")
        return "Lightricks/LTX-2"

    def max_runtime_for(self, task_type: str) -> int:
        """Maximum run time in seconds for a task type (dagster/max_runtime)."""
        return {
            "generate_video": self.max_runtime_video_seconds,
            "generate_image": self.max_runtime_image_seconds,
            "process_audio": self.max_runtime_audio_seconds,
        }[task_type]


def parse_workers(spec: str) -> dict[str, int]:
    """Parse "gpu_heavy=1,gpu_light=2" into slots per worker type."""
    slots: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition("=")
        if name not in ("gpu_heavy", "gpu_light") or not count.isdigit():
            raise ValueError(f"MOVIEGEN_WORKERS: bad entry {part!r} (want gpu_heavy=N,gpu_light=N)")
        slots[name] = int(count)
    return slots


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return Settings()
