"""Request and response bodies, with the examples that OpenAPI shows."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

# A 1x1 red PNG: small enough to paste into the docs, real enough to embed.
EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AA"
    "AAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


Base64Image = Annotated[str, Field(min_length=1, description="base64 image or data URL")]


class ImagesRequest(BaseModel):
    images: list[Base64Image] = Field(..., min_length=1, description="base64 images or data URLs",
                                      examples=[[EXAMPLE_IMAGE]])


class SearchRequest(BaseModel):
    images: Annotated[list[Base64Image], Field(min_length=1)] | None = Field(
        None, description="query images (base64 / data URLs)", examples=[[EXAMPLE_IMAGE]])
    embeddings: list[list[float]] | None = Field(
        None, description="query vectors of the model's dimension (normalized here)")
    k: int = Field(10, ge=1, description="neighbours per query (at most the server's max_k)")


class ClassifyRequest(ImagesRequest):
    k: int = Field(5, ge=1, description="top classes per image")


class GalleryItem(BaseModel):
    id: str = Field(..., min_length=1, max_length=256, description="may contain '/'")
    label: str | None = Field(None, max_length=256)
    image: str | None = Field(None, description="base64 image or data URL")
    embedding: list[float] | None = None


class GalleryAddRequest(BaseModel):
    items: list[GalleryItem] = Field(..., min_length=1)


class GalleryDeleteRequest(BaseModel):
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(..., min_length=1)


class EmbedResponse(BaseModel):
    model: str
    precision: str
    dimension: int
    embeddings: list[list[float]]


class NeighborOut(BaseModel):
    id: str
    label: str | None
    score: float


class SearchResponse(BaseModel):
    model: str
    precision: str
    results: list[list[NeighborOut]]


class ClassOut(BaseModel):
    label: str
    index: int
    probability: float


class ClassifyResponse(BaseModel):
    model: str
    precision: str
    results: list[list[ClassOut]]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {code: {"model": ErrorResponse}
          for code in (400, 401, 403, 404, 408, 413, 415, 422, 499, 503)}


def image_body(json_model: type[BaseModel]) -> dict:
    """OpenAPI for routes that take JSON, multipart files or one raw image body."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}
