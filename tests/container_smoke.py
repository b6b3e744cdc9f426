"""Container smoke test, run by .ci/run: build the Dockerfile with podman on the local base image,
serve a real bundle from it, and check from the host over HTTP.

    python -m tests.container_smoke [--bundle DIR]

Steps: hadolint both Dockerfiles -> build -> run with the bundle mounted read-only -> /readyz ->
/v1/embed on a real CIFAR-10 image equals in-process ONNX Runtime -> a bad image gets a 4xx ->
SIGTERM stops the container cleanly. Prints the image size and the build time.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IMAGE = "localhost/simclr-embed:ci"
NAME = "simclr-embed-smoke"
log = logging.getLogger("container_smoke")


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    """Run with podman's environment from ../shared/container/podman-env.sh."""
    env_file = SHARED / "container/podman-env.sh"
    return subprocess.run(["bash", "-c", f". {env_file} && {cmd}"], check=True, text=True,
                          capture_output=True, **kw)


def make_bundle(out: Path) -> Path:
    from simclr_embed.export.build import ExportConfig, build_bundle
    from simclr_embed.training.train import TrainConfig, train

    data = str(SHARED / "data/cifar10")
    ckpt = train(TrainConfig(data=data, out_dir=str(out / "run"), train_per_class=8,
                             test_per_class=4, epochs=1, batch_size=32, warmup_epochs=1,
                             knn_every=0, probe_epochs=5))
    return build_bundle(ExportConfig(str(ckpt), out=str(out / "bundle"), calibration_per_class=5,
                                     gallery_per_class=10, test_per_class=5, latency_rounds=1,
                                     tolerance=5.0))


def wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    logs = sh(f"podman logs {NAME}").stdout
    raise TimeoutError(f"container not ready after {timeout} s:\n{logs}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", default=None, help="existing bundle (default: build a tiny one)")
    p.add_argument("--port", type=int, default=18080)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="smoke-"))
    bundle = Path(args.bundle) if args.bundle else make_bundle(tmp)
    os.chmod(tmp, 0o755)  # the container's non-root user reads the mounted bundle

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    subprocess.run([hadolint, "Dockerfile", "Dockerfile.gpu"], check=True, cwd=REPO)
    log.info("hadolint: Dockerfile and Dockerfile.gpu clean")
    sh(str(SHARED / "container/build-base-image.sh"))
    start = time.perf_counter()
    sh(f"podman build -q --network host --build-arg BASE_IMAGE=localhost/python-base:3.11 "
       f"-t {IMAGE} {REPO}")
    build_s = time.perf_counter() - start
    size = int(sh(f"podman image inspect {IMAGE} --format '{{{{.Size}}}}'").stdout.strip())
    log.info("built %s in %.0f s: %.0f MB", IMAGE, build_s, size / 1e6)

    subprocess.run(["bash", "-c", f". {SHARED}/container/podman-env.sh && podman rm -f {NAME}"],
                   capture_output=True)
    sh(f"podman run -d --name {NAME} --network host -e SIMCLR_EMBED_PORT={args.port} "
       f"-e SIMCLR_EMBED_HOST=127.0.0.1 -v {bundle.resolve()}:/models/bundle:ro {IMAGE}")
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(url)
        log.info("/readyz: %s", httpx.get(url + "/readyz").json())
        check_embedding(url, bundle)
        bad = httpx.post(url + "/v1/embed", content=b"not an image",
                         headers={"content-type": "image/png"})
        assert bad.status_code == 400, bad.text
        log.info("bad image -> %d %s", bad.status_code, bad.json()["error"]["code"])
        user = sh(f"podman exec {NAME} id -u").stdout.strip()
        assert user == "10001", f"container runs as uid {user}"
        start = time.perf_counter()
        sh(f"podman stop -t 25 {NAME}")
        logs = sh(f"podman logs {NAME}").stdout + sh(f"podman logs {NAME}").stderr
        assert "Application shutdown complete" in logs, logs[-2000:]
        log.info("SIGTERM -> clean shutdown in %.1f s", time.perf_counter() - start)
    finally:
        subprocess.run(["bash", "-c", f". {SHARED}/container/podman-env.sh && podman rm -f {NAME}"],
                       capture_output=True)
    log.info("container smoke test passed: image %.0f MB, build %.0f s", size / 1e6, build_s)
    return 0


def check_embedding(url: str, bundle: Path) -> None:
    from simclr_embed.service.bundle import load_bundle
    from simclr_embed.service.runtime import make_session, run_batches
    from simclr_embed.training.data import load_dataset

    info = httpx.get(url + "/v1/model").json()
    log.info("the container serves on %s: %s", info["provider"], info["provider_reason"])
    provider = "openvino" if info["provider"] == "OpenVINO-CPU" else "cpu"
    _, test = load_dataset(str(SHARED / "data/cifar10"))
    image = test.images[123]
    session = make_session(load_bundle(bundle).encoder_path("int8"), 0, provider)
    ref, _ = run_batches(session, image[None])  # the same runtime in-process
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    r = httpx.post(url + "/v1/embed", content=buf.getvalue(), headers={"content-type": "image/png"})
    got = np.array(r.json()["embeddings"][0])
    diff = float(np.abs(got - ref[0]).max())
    assert diff < 1e-4, f"container embedding differs from in-process {provider} by {diff}"
    log.info("/v1/embed from the container equals in-process %s (max abs diff %.1e)", provider,
             diff)


if __name__ == "__main__":
    sys.exit(main())
