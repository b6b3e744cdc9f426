"""provider=auto: the export records each other runtime's accuracy against ONNX Runtime FP32,
and the service chooses, by timing, only among the runtimes that passed."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import httpx
import numpy as np

from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import make_session, open_runtime, run_batches
from tests.support.servers import Server


def test_the_bundle_records_openvino_against_fp32_truthfully(bundle_dir: Path,
                                                             cifar10) -> None:
    """The recorded cosines are what the runtimes give now, and `passed` follows the gates."""
    bundle = load_bundle(bundle_dir)
    gates = bundle.manifest["metrics"]["runtimes"]["openvino"]
    assert set(gates) == {"fp32", "int8"}
    test = cifar10[1].images[::50]  # 200 real test images
    ref, _ = run_batches(make_session(bundle.encoder_path("fp32")), test)
    for precision, gate in gates.items():
        emb, _ = run_batches(make_session(bundle.encoder_path(precision), 0, "openvino"), test)
        cos = float((emb * ref).sum(1).mean())
        assert cos >= 0.99, (precision, cos)  # within tolerance of FP32 on the same images
        assert abs(cos - gate["cosine_mean"]) < 0.01
        export = bundle.manifest["export"]
        assert gate["passed"] == (gate["cosine_mean"] >= export["runtime_min_cosine"]
                                  and gate["linear_drop_points"] <= export["runtime_max_drop"])


def rates(reason: str) -> dict[str, float]:
    return {n: float(r) for n, r in re.findall(r"(\w+) (\d+) images/s", reason)}


def test_auto_takes_the_fastest_runtime_that_passed(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    m = copy.deepcopy(bundle.manifest)
    path = bundle.encoder_path("int8")
    m["metrics"]["runtimes"]["openvino"]["int8"]["passed"] = True
    session, reason = open_runtime(path, m, "int8")
    timed = rates(reason)
    assert set(timed) == {"cpu", "openvino"}, reason
    best = max(timed, key=timed.get)
    assert reason.startswith(f"auto: {best}")
    assert session.get_providers()[0] == ("OpenVINO-CPU" if best == "openvino"
                                          else "CPUExecutionProvider")

    m["metrics"]["runtimes"]["openvino"]["int8"]["passed"] = False
    session, reason = open_runtime(path, m, "int8")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "openvino: failed the export's gates" in reason

    del m["metrics"]["runtimes"]
    session, reason = open_runtime(path, m, "int8")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "openvino: not checked" in reason
    x = np.zeros((2, 32, 32, 3), np.uint8)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape[0] == 2


def test_a_server_on_auto_says_what_it_chose_and_keeps_it(bundle_dir: Path,
                                                         tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = Server(bundle_dir, data, SIMCLR_EMBED_PROVIDER="auto").start()
    try:
        info = httpx.get(srv.url + "/v1/model").json()
    finally:
        srv.stop()
    assert info["provider_reason"].startswith("auto: ")
    assert info["provider"] in ("CPUExecutionProvider", "OpenVINO-CPU")
    (kept,) = json.loads((data / "runtime-choice.json").read_text()).values()
    assert kept["provider"] == ("openvino" if info["provider"] == "OpenVINO-CPU" else "cpu")
    srv = Server(bundle_dir, data, SIMCLR_EMBED_PROVIDER="auto").start()
    try:
        again = httpx.get(srv.url + "/v1/model").json()
    finally:
        srv.stop()
    assert again["provider"] == info["provider"]
    assert again["provider_reason"].endswith("(kept in runtime-choice.json)")


def test_the_choice_is_kept_for_later_starts(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_dir)
    m = copy.deepcopy(bundle.manifest)
    m["metrics"]["runtimes"]["openvino"]["int8"]["passed"] = True
    path, kept = bundle.encoder_path("int8"), tmp_path / "runtime-choice.json"
    first, why = open_runtime(path, m, "int8", 1, choice_file=kept)
    assert "images/s" in why and kept.exists()
    again, why_again = open_runtime(path, m, "int8", 1, choice_file=kept)
    assert why_again == f"{why} (kept in {kept.name})"
    assert again.get_providers() == first.get_providers()
    _, other = open_runtime(path, m, "int8", 2, choice_file=kept)  # another thread count
    assert "kept in" not in other
    m["metrics"]["runtimes"]["openvino"]["int8"]["passed"] = False  # no longer eligible
    session, _ = open_runtime(path, m, "int8", 2, choice_file=kept)
    assert session.get_providers() == ["CPUExecutionProvider"]  # whatever was kept


def test_several_graphs_keep_their_choices_side_by_side(bundle_dir: Path,
                                                        tmp_path: Path) -> None:
    """The models of one server share the data directory's choice file: a second graph's
    choice does not push out the first's (which would time it again at every start)."""
    bundle = load_bundle(bundle_dir)
    m = copy.deepcopy(bundle.manifest)
    for precision in ("int8", "fp32"):
        m["metrics"]["runtimes"]["openvino"][precision]["passed"] = True
    kept = tmp_path / "runtime-choice.json"
    for precision in ("int8", "fp32"):
        open_runtime(bundle.encoder_path(precision), m, precision, 1, choice_file=kept)
    for precision in ("int8", "fp32"):
        _, why = open_runtime(bundle.encoder_path(precision), m, precision, 1, choice_file=kept)
        assert why.endswith(f"(kept in {kept.name})"), (precision, why)


def test_an_fp32_server_answers_what_the_fp32_graph_computes(bundle_dir: Path,
                                                              tmp_path: Path) -> None:
    """PRECISION=fp32 serves the bundle's FP32 encoder (and its FP32 gallery): the embedding of
    a lossless PNG is the one its graph gives for the same pixels."""
    from tests.support.servers import png

    pixels = np.random.default_rng(21).integers(0, 256, (1, 32, 32, 3), np.uint8)
    bundle = load_bundle(bundle_dir)
    session = make_session(bundle.encoder_path("fp32"), 1)
    want = session.run(None, {session.get_inputs()[0].name: pixels})[0][0]
    want = want / np.linalg.norm(want)  # served vectors are unit-norm
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_PRECISION="fp32").start()
    try:
        r = httpx.post(srv.url + "/v1/embed", content=png(pixels[0]),
                       headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["precision"] == "fp32", r.text
        np.testing.assert_allclose(r.json()["embeddings"][0], want, atol=1e-5)
        info = httpx.get(srv.url + "/v1/model").json()
        assert info["precision"] == "fp32"
    finally:
        srv.stop()
