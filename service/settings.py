"""Service configuration from the environment (prefix SIMCLR_EMBED_), e.g.
SIMCLR_EMBED_BUNDLE=bundles/default SIMCLR_EMBED_PRECISION=fp32 SIMCLR_EMBED_API_KEY=...

The settings come in groups, one class each (the model, batching, admission, limits, gallery,
access, server); `Settings` joins them, keeps the variable names flat and checks the groups
against each other at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from simclr_embed.errors import ConfigError


class ModelSettings(BaseModel):
    """Which encoder serves, on which runtime."""

    bundle: Path = Field(Path("bundles/default"), description="the model bundle directory, "
                         "or a directory of bundles (each served as its own model)")
    more_bundles: str = Field("", description="comma-separated bundle directories served "
                              "beside it (service/models.py)")
    precision: Literal["int8", "fp32"] = Field("int8", description="which of the bundle's "
                                               "encoders serves")
    provider: Literal["auto", "cpu", "cuda", "openvino"] = Field(
        "auto", description="auto: the fastest at start among the runtimes that passed the "
        "bundle's gates (service/runtime.py); cpu / cuda: ONNX Runtime; openvino")
    threads: int = Field(0, ge=0, description="intra-op threads of the runtime; 0 = one per "
                         "core")


    def bundle_dirs(self) -> list[Path]:
        """Every bundle served, the default model first: a directory of bundles gives its
        subdirectories in name order."""
        first = [self.bundle]
        if not (self.bundle / "manifest.json").exists() and self.bundle.is_dir():
            first = sorted(d for d in self.bundle.iterdir() if (d / "manifest.json").exists())
        return (first or [self.bundle]) + [Path(b.strip()) for b in self.more_bundles.split(",")
                                           if b.strip()]


class BatchingSettings(BaseModel):
    """Requests queued while a batch runs form the next one (service/batcher.py)."""

    max_batch_size: int = Field(64, ge=1, description="images in one model run at most")
    max_wait_ms: float = Field(0.0, ge=0, description="how long a lone request waits for "
                               "company; 0: never")
    max_queue_images: int = Field(512, ge=1, description="beyond this, 503 + Retry-After")
    model_timeout_s: float = Field(30.0, gt=0, description="longest wait for the model, "
                                   "else 503")
    decode_threads: int = Field(2, ge=1, description="threads decoding images larger than "
                                "thumbnails")


class AdmissionSettings(BaseModel):
    """At arrival, before the body is read (service/admission.py)."""

    max_inflight_requests: int = Field(64, ge=1, description="POSTs being read, decoded or run")
    max_inflight_bytes: int = Field(32 * 2**20, ge=1024, description="body bytes held at "
                                    "once, by requests being received or served")
    body_timeout_s: float = Field(10.0, gt=0, description="to receive a whole body, else 408")
    min_upload_bytes_per_s: int = Field(32 * 1024, ge=1, description="a body slower than "
                                        "this on average after upload_grace_s gets 408")
    upload_grace_s: float = Field(2.0, ge=0, description="before min_upload_bytes_per_s")


class LimitSettings(BaseModel):
    """What one request may ask for."""

    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="a request body, an image "
                                "file of `simclr-embed index` or a fetched image, at most")
    max_images_per_request: int = Field(64, ge=1, description="images (or gallery items, "
                                        "query vectors) in one request")
    max_request_pixels: int = Field(
        50_000_000, ge=1, description="decode budget of one request: its images' pixels")
    max_image_pixels: int = Field(25_000_000, ge=1, description="decompression-bomb guard")
    max_image_aspect: float = Field(64.0, ge=1, description="longer / shorter side, at most")
    max_decode_mb: int = Field(256, ge=1, description="estimated peak memory of one decode")
    max_k: int = Field(100, ge=1, description="neighbours one search may ask for")
    max_label_chars: int = Field(256, ge=1, description="a gallery item's label, at most")
    max_list_items: int = Field(1000, ge=1, description="page size limit of the listing")
    fetch_hosts: str = Field("", description="comma-separated hosts (exact names or "
                             ".suffixes) whose http(s) image URLs are fetched; empty: none "
                             "(service/fetch.py)")
    fetch_timeout_s: float = Field(5.0, gt=0, description="per socket operation; twice it "
                                   "for a whole fetch")


class GallerySettings(BaseModel):
    """Where the gallery lives and how it is searched (docs/gallery.md)."""

    data_dir: Path = Field(Path("service-data"), description="the embedded gallery's "
                           "database, its index snapshot and the runtime choice")
    gallery_url: SecretStr | None = Field(None, description="postgresql://... puts the "
                                          "gallery in PostgreSQL + pgvector (docs/gallery.md)")
    accept_gallery_loss: bool = Field(False, description="start although the gallery holds "
                                      "fewer changes than were acknowledged (docs/gallery.md)")
    index: Literal["auto", "flat", "hnsw"] = Field(
        "auto", description="auto: exact below 20,000 vectors, HNSW from there (docs/gallery.md)")
    faiss_threads: int = Field(1, ge=1, description="so search leaves the cores to the model")
    hnsw_m: int = Field(32, ge=2, description="HNSW graph degree (FAISS and pgvector)")
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW candidates per search (at least "
                                "k); raised where the measured recall needs it")
    recall_target: float = Field(0.98, gt=0, le=1, description="recall@10 an HNSW index must "
                                 "measure (efSearch raised, or exact search, to meet it)")


class AccessSettings(BaseModel):
    """Keys (service/auth.py)."""

    api_key: SecretStr | None = Field(None, description="the key for gallery changes; none: "
                                      "the gallery is read-only")
    read_key: SecretStr | None = Field(None, description="closes gallery listings, vectors "
                                       "and thumbnails to all but this key or the API key")
    require_api_key: bool = Field(False, description="the key on every route but the probes")


class ServerSettings(BaseModel):
    """The process: `simclr-embed serve` and the uvicorn factory read the same."""

    host: str = Field("127.0.0.1", description="the address to listen on")
    port: int = Field(8000, description="the port to listen on")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object "
                                                "per log line")
    access_log: bool = Field(True, description="one line per request (service/request_log.py)")


GROUPS: tuple[type[BaseModel], ...] = (ModelSettings, BatchingSettings, AdmissionSettings,
                                       LimitSettings, GallerySettings, AccessSettings,
                                       ServerSettings)


class Settings(BaseSettings, *GROUPS):  # type: ignore[misc]
    model_config = SettingsConfigDict(env_prefix="SIMCLR_EMBED_", extra="ignore")

    @field_validator("api_key", "read_key", "gallery_url", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: object) -> object:
        """An empty variable (SIMCLR_EMBED_API_KEY=) means unset, not the empty string."""
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.require_api_key and self.api_key is None:
            raise ConfigError("SIMCLR_EMBED_REQUIRE_API_KEY is set but SIMCLR_EMBED_API_KEY is "
                             "empty: set a key, or turn the requirement off")
        _at_most("max_images_per_request", self, "max_queue_images",
                 "such requests could never be queued")
        _at_most("max_images_per_request", self, "max_batch_size",
                 "such requests would run in batch shapes never warmed up")
        return self


def load_settings(**given: Any) -> Settings:
    """The settings given (flags of `simclr-embed`), the SIMCLR_EMBED_* variables for the rest;
    a value that cannot work is a user's error, each named in one line."""
    try:
        return Settings(**given)
    except ValidationError as e:
        raise ConfigError("; ".join(_problem(err) for err in e.errors())) from None


def _problem(err: Any) -> str:
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # ours already names the settings
        return str(cause)
    name = "_".join(str(part) for part in err["loc"])
    flag = "--" + name.replace("_", "-")
    return f"{flag} / SIMCLR_EMBED_{name.upper()} ({err.get('input')!r}): {err['msg']}"


def _at_most(small: str, s: Settings, large: str, why: str) -> None:
    """Two settings that contradict each other name each other, with both values."""
    a, b = getattr(s, small), getattr(s, large)
    if a > b:
        raise ConfigError(f"SIMCLR_EMBED_{small.upper()} ({a}) is larger than "
                         f"SIMCLR_EMBED_{large.upper()} ({b}): {why}; lower the first or raise "
                         "the second")


def settings_table() -> str:
    """The README's settings table, group by group, made from the fields themselves (`python -m
    simclr_embed.service.settings` prints it; a test keeps the README's copy equal)."""
    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for group in GROUPS:
        title = group.__name__.removesuffix("Settings").lower()
        rows.append(f"| **{title}** | | {(group.__doc__ or '').splitlines()[0]} |")
        for name, f in group.model_fields.items():
            default = "(none)" if f.default in (None, "") else f"`{f.default}`"
            rows.append(f"| `SIMCLR_EMBED_{name.upper()}` | {default} | {f.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(settings_table())
