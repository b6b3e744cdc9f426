"""Request and response bodies, with the examples that OpenAPI shows."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

# A 1x1 red PNG: small enough to paste into the docs, real enough to embed.
# What one gallery item may carry (POST /v1/gallery and `simclr-embed index` alike).
MAX_ID_CHARS, MAX_METADATA_KEYS, MAX_METADATA_BYTES = 256, 32, 4096

EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AA"
    "AAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


class Strict(BaseModel):
    """A request body: a field the server does not know is a 422 naming it, never dropped."""

    model_config = ConfigDict(extra="forbid")


# What preprocess.decode_base64 and fetch accept: padded base64 (no whitespace), a base64 data
# URL, or an http(s) URL; a string outside it is a 422 before any decoding.
_B64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
IMAGE_PATTERN = f"^(?:(?:data:[^,]*;base64,)?{_B64}|[Hh][Tt][Tt][Pp][Ss]?://.+)$"
_IMAGE = re.compile(IMAGE_PATTERN)


def _image_string(value: str) -> str:
    """The pattern, checked here rather than by pydantic so that the error says what is
    accepted instead of quoting the regular expression."""
    if not _IMAGE.match(value):
        raise PydanticCustomError("image_string",
                                  "not base64, a base64 data URL or an http(s) URL")
    return value


Base64Image = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": IMAGE_PATTERN},
                                   description="base64 image, base64 data URL, or http(s) URL"),
                        AfterValidator(_image_string)]


class ImagesRequest(Strict):
    images: list[Base64Image] = Field(..., min_length=1, description="base64 images or data URLs",
                                      examples=[[EXAMPLE_IMAGE]])


Scalar = str | int | float | bool | None


class SearchFilter(Strict):
    label: str | Annotated[list[str], Field(min_length=1, max_length=100)] | None = Field(
        None, description="a label, or a list of labels (any of them)")
    metadata: dict[str, Scalar | Annotated[list[Scalar], Field(min_length=1, max_length=100)]
                   ] | None = Field(None, max_length=16, description="key -> value (exact "
                                    "match) or a list of values (any of them); all keys must "
                                    "match")


class SearchRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"oneOf": [  # extra="forbid" from Strict
        {"required": ["images"], "properties": {"images": {"type": "array"}}},
        {"required": ["embeddings"], "properties": {"embeddings": {"type": "array"}}}]})

    images: Annotated[list[Base64Image], Field(min_length=1)] | None = Field(
        None, description="query images (base64 / data URLs)", examples=[[EXAMPLE_IMAGE]])
    embeddings: list[list[float]] | None = Field(
        None, description="query vectors of the model's dimension (normalized here)")
    k: int = Field(10, ge=1, description="neighbours per query (at most the server's max_k)")
    filter: SearchFilter | None = Field(None, description="only items that match it",
                                        examples=[{"label": "cat"}])


class ClassifyRequest(ImagesRequest):
    k: int | None = Field(None, ge=1, description="top classes per image (default: 5, or "
                          "every class of a model with fewer)")


class GalleryItem(Strict):
    # exactly one of image or embedding, as the route checks (a 400 otherwise)
    model_config = ConfigDict(json_schema_extra={"oneOf": [  # extra="forbid" from Strict
        {"required": ["image"], "properties": {"image": {"type": "string"}}},
        {"required": ["embedding"], "properties": {"embedding": {"type": "array"}}}]})

    id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS, description="may contain '/'")
    label: str | None = Field(None, max_length=256)
    image: str | None = Field(None, description="base64 image or data URL")
    embedding: list[float] | None = None
    metadata: dict[str, Scalar] | None = Field(
        None, max_length=MAX_METADATA_KEYS, description="flat JSON object: what search "
        "filters match on",
        examples=[{"sku": "A-113", "in_stock": True}])


class GalleryAddRequest(Strict):
    items: list[GalleryItem] = Field(..., min_length=1)


class GalleryDeleteRequest(Strict):
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(..., min_length=1)


class DuplicatesRequest(Strict):
    threshold: float | None = Field(None, gt=0, le=1, description="the cosine from which two "
                                    "items are near-duplicates (default: the bundle's "
                                    "calibrated threshold)")
    limit: int = Field(1000, ge=1, description="pairs listed at most, and never more than "
                       "SIMCLR_EMBED_MAX_LIST_ITEMS (all are counted in total_pairs)")


class EmbedResponse(BaseModel):
    model: str
    precision: str
    dimension: int
    encoding_format: str = "float"
    embeddings: list[list[float]] | list[str] = Field(
        ..., description="float lists, or one base64 string per vector (service/encodings.py)")
    scales: list[float] | None = Field(None, description="int8 only: value = byte * scale")


class NeighborOut(BaseModel):
    id: str
    label: str | None
    score: float
    metadata: dict | None = None


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
    item: str | None = Field(None, description="the request's item it concerns: images[3], "
                             "files[0] ('cat.png'), items[2] (id 'x')")


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse}
          for code in (400, 401, 403, 404, 408, 413, 415, 422, 499, 500, 503, 507)}


def with_setting_limits(schema: dict, max_list_items: int, models: list[str], max_k: int,
                        classes: int, dims: list[int]) -> dict:
    """The OpenAPI document with what comes from settings and the served models, not from
    code: the listing's page size, the models `model` may name, each route's largest k, and
    the embedding dimensions (sorted) that the served models take."""
    paths = schema["paths"]
    gallery, search = paths["/v1/gallery"], paths["/v1/search"]["post"]
    _limit(gallery["get"], "limit", max_list_items)
    _limit(search, "k", max_k)
    _limit(paths["/v1/classify"]["post"], "k", classes)
    body = search["requestBody"]["content"]["application/json"]["schema"]
    _vectors(body["properties"]["embeddings"]["anyOf"][0]["items"], dims)
    item = gallery["post"]["requestBody"]["content"]["application/json"]["schema"]
    _vectors(item["properties"]["items"]["items"]["properties"]["embedding"]["anyOf"][0], dims)
    for ops in paths.values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"] == "model" and param["in"] == "query":
                    param["schema"] = {"type": "string", "enum": models}
    return schema


def _limit(op: dict, name: str, top: int) -> None:
    """The maximum of an integer, in the query and in the JSON body alike."""
    found = [p["schema"] for p in op.get("parameters", []) if p["name"] == name]
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    found += [prop] if (prop := body.get("schema", {}).get("properties", {}).get(name)) else []
    for schema in found:
        for option in schema.get("anyOf", [schema]):
            if option.get("type") == "integer":
                option["maximum"] = top


def _vectors(array: dict, dims: list[int]) -> None:
    array["minItems"], array["maxItems"] = dims[0], dims[-1]


def inline_schema(model: type[BaseModel]) -> dict:
    """model's JSON schema with its $defs written in place: a $ref would be read against the
    whole OpenAPI document, where "#/$defs" does not exist."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return dict(resolve(schema))


def json_body(json_model: type[BaseModel]) -> dict:
    """OpenAPI for routes that read their JSON through bodies.read_json."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(json_model)}}}}


def image_body(json_model: type[BaseModel]) -> dict:
    """OpenAPI for routes that take JSON, multipart files or one raw image body."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(json_model)},
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"],
                                           "properties": {"files": {
                                               "type": "array", "minItems": 1,
                                               "items": {"type": "string", "format": "binary"}}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}
