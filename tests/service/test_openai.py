"""The official `openai` client against a real server: embeddings equal /v1/embed's for the same
images in both encodings, GET /v1/models lists the served model, and errors come back in
OpenAI's shape (the client raises its own exception types for them)."""

import base64

import numpy as np
import openai
import pytest

from tests.support.servers import png


@pytest.fixture(scope="module")
def oa(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def images(cifar10) -> list[bytes]:
    return [png(x) for x in cifar10[1].images[:4]]


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_models_and_embeddings_match_the_native_route(oa, client, images) -> None:
    (model,) = oa.models.list().data
    assert model.id.startswith("simclr-resnet18-")
    native = np.asarray(client.post("/v1/embed", json={"images": [data_url(i) for i in images]}
                                    ).json()["embeddings"])
    for fmt in ("base64", "float"):  # the client asks for base64 unless told otherwise
        kw = {} if fmt == "base64" else {"encoding_format": "float"}
        r = oa.embeddings.create(model=model.id, input=[data_url(i) for i in images], **kw)
        got = np.asarray([d.embedding for d in r.data])
        assert [d.index for d in r.data] == [0, 1, 2, 3] and r.model == model.id
        np.testing.assert_allclose(got, native, atol=1e-6)
    one = oa.embeddings.create(model="simclr-embed", input=base64.b64encode(images[0]).decode())
    np.testing.assert_allclose(one.data[0].embedding, native[0], atol=1e-6)
    assert one.usage.total_tokens == 0


def test_errors_take_openais_shape(oa, client) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oa.embeddings.create(model="simclr-embed", input=["https://example.com/cat.png"])
    assert "not fetched" in e.value.message
    with pytest.raises(openai.NotFoundError):
        oa.embeddings.create(model="gpt-4o", input=["bm90IGFuIGltYWdl"])
    with pytest.raises(openai.UnprocessableEntityError, match="not base64"):
        oa.embeddings.create(model="simclr-embed", input=["x"])
    with pytest.raises(openai.BadRequestError):
        oa.embeddings.create(model="simclr-embed", input=["bm90IGFuIGltYWdl"])  # not an image
    r = client.post("/v1/embeddings", json={"model": "simclr-embed"})
    assert r.status_code == 422
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
