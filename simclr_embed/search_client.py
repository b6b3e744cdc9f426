"""`simclr-embed search IMAGE...`: a running server's nearest gallery items for image files, so
that an indexed collection can be checked from the shell. The standard library only: this runs
wherever the CLI does."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

from simclr_embed.errors import UserError

PER_REQUEST = 64  # the server's default max_images_per_request


class SearchError(UserError, RuntimeError):
    """The server could not be reached or refused the request (its message is kept)."""


def _post(url: str, body: dict, key: str | None) -> dict:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", {}).get("message", "")
        except ValueError:
            detail = ""
        raise SearchError(f"{url} answered {e.code}: {detail or e.reason}") from None
    except urllib.error.URLError as e:
        raise SearchError(f"cannot reach {url}: {e.reason} (is `simclr-embed serve` running? "
                          "pass its address with --url)") from None


def search_files(images: list[str], k: int, url: str, key: str | None = None) -> dict:
    """The server's /v1/search answer for the files, in order (several requests if need be)."""
    results, model = [], None
    for start in range(0, len(images), PER_REQUEST):
        batch = []
        for name in images[start : start + PER_REQUEST]:
            try:
                batch.append(base64.b64encode(Path(name).read_bytes()).decode())
            except OSError as e:
                raise SearchError(f"cannot read {name}: {e.strerror}") from None
        answer = _post(url.rstrip("/") + "/v1/search", {"images": batch, "k": k}, key)
        results += answer["results"]
        model = answer["model"]
    return {"model": model, "results": results}


def table(images: list[str], answer: dict) -> str:
    """One block per image: rank, score, label, id."""
    lines = []
    for name, hits in zip(images, answer["results"], strict=True):
        lines.append(f"{name}  (model {answer['model']})")
        lines.append(f"  {'rank':>4}  {'score':>6}  {'label':<16}  id")
        for n, h in enumerate(hits, 1):
            lines.append(f"  {n:>4}  {h['score']:6.3f}  {h['label'] or '-'!s:<16}  {h['id']}")
    return "\n".join(lines) + "\n"
