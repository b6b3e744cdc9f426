"""Checkpoint -> ONNX -> INT8 -> bundle on a real short-trained checkpoint and real images."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from simclr_embed.export.build import ExportConfig, ExportError, build_bundle, check_parity
from simclr_embed.export.onnx_export import build_embed_classify, export_onnx
from simclr_embed.export.quantize import quantize_int8
from simclr_embed.service.bundle import BundleError, load_bundle
from simclr_embed.service.runtime import make_session, run_batches
from simclr_embed.training.checkpoint import CheckpointError, load_checkpoint
from simclr_embed.training.data import stratified_subset
from simclr_embed.training.train import TrainConfig, train


def test_bundle_report_and_parity(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)  # verifies every hash
    report = bundle.manifest["metrics"]
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["cosine_mean"] > 0.99 and report["cosine_min"] > 0.9
    assert 0.5 <= report["top10_overlap"] <= 1.0
    assert report["int8"]["size_mb"] < report["fp32"]["size_mb"] / 3
    assert report["linear_drop_points"] <= 5.0
    md = (bundle_dir / "report.md").read_text()  # the table says what the JSON says
    assert f"Test images: {report['test_images']}, gallery: {report['gallery_images']}" in md
    assert f"| {report['fp32']['linear_top1']:.2f} | {report['int8']['linear_top1']:.2f} |" in md
    ids, labels, emb = bundle.gallery("int8")
    assert emb.shape == (200, 512) and len(ids) == len(labels) == 200
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_int8_weights_take_seven_bits(bundle_dir: Path) -> None:
    """7-bit weights: ORT's AVX2 kernels (no VNNI) saturate on full 8-bit ones."""
    graph = onnx.load(str(load_bundle(bundle_dir).encoder_path("int8"))).graph
    weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) >= 20  # every conv of the ResNet-18
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64  # 8 bits: 127


def test_onnx_metadata_and_gallery_match_the_int8_encoder(bundle_dir: Path, cifar10) -> None:
    bundle = load_bundle(bundle_dir)
    meta = {p.key: p.value for p in onnx.load(str(bundle.encoder_path("int8"))).metadata_props}
    assert json.loads(meta["class_names"])[9] == "truck"
    assert meta["embedding_dim"] == "512" and "NHWC uint8" in meta["input_layout"]
    assert len(meta["config_digest"]) == 64 and "metrics" in meta
    ids, labels, emb = bundle.gallery("int8")
    gallery = stratified_subset(cifar10[0], 20, seed=0)  # what the export used
    again, _ = run_batches(make_session(bundle.encoder_path("int8")), gallery.images[:16])
    np.testing.assert_allclose(again, emb[:16], atol=1e-5)
    assert ids[0] == "airplane/0" and labels.tolist() == gallery.labels.tolist()
    w, b = bundle.head()
    assert w.shape == (10, 512) and b.shape == (10,)


def test_parity_on_real_images(short_checkpoint: Path, cifar10, tmp_path: Path) -> None:
    state = load_checkpoint(short_checkpoint)
    path = export_onnx(state, tmp_path / "m.onnx")
    images = cifar10[1].images[:32]
    assert check_parity(state, make_session(path), images) <= 1e-4
    emb, logits = run_batches(make_session(path), images, batch_size=7)  # odd batch: dynamic axis
    with torch.no_grad():
        ref_emb, ref_logits = build_embed_classify(state)(torch.from_numpy(images))
    np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)


@pytest.mark.parametrize("damage", ["tamper", "truncate", "delete"])
def test_manifest_rejects_damaged_files(bundle_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    target = copy / "gallery/embeddings_int8.npy"
    if damage == "tamper":
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.unlink()
    with pytest.raises(BundleError, match=r"gallery/embeddings_int8.npy"):
        load_bundle(copy)


def test_bad_checkpoints_give_clear_errors(tmp_path: Path, cifar10_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        build_bundle(ExportConfig(str(tmp_path / "missing.pt"), out=str(tmp_path / "o")))
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"bad.pt"):
        build_bundle(ExportConfig(str(tmp_path / "bad.pt"), out=str(tmp_path / "o")))
    cfg = TrainConfig(data=str(cifar10_dir), out_dir=str(tmp_path / "run"), train_per_class=4,
                      test_per_class=2, epochs=2, batch_size=20, knn_every=0)
    unfinished = train(cfg, stop_after=1)
    with pytest.raises(CheckpointError, match=r"no linear head.*--resume"):
        build_bundle(ExportConfig(str(unfinished), out=str(tmp_path / "o")))


def test_failed_export_keeps_the_previous_bundle(short_checkpoint: Path, bundle_dir: Path,
                                                 tmp_path) -> None:
    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)  # the bundle a server is reading
    before = (out / "manifest.json").read_bytes()
    cfg = ExportConfig(str(short_checkpoint), out=str(out), calibration_per_class=2,
                       gallery_per_class=5, test_per_class=5, latency_rounds=1, tolerance=-101)
    with pytest.raises(ExportError, match=r"below FP32"):
        build_bundle(cfg)
    assert (out / "manifest.json").read_bytes() == before
    load_bundle(out)  # still whole: every hash verifies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.rejected-report.json"]


@pytest.mark.parametrize(("gate", "message"), [("min_cosine_mean", "mean cosine"),
                                               ("min_top10_overlap", "top-10 overlap")])
def test_int8_is_gated_on_cosine_and_neighbours(short_checkpoint: Path, tmp_path, gate,
                                                message) -> None:
    cfg = ExportConfig(str(short_checkpoint), out=str(tmp_path / "b"), calibration_per_class=2,
                       gallery_per_class=5, test_per_class=5, latency_rounds=1, tolerance=100,
                       **{gate: 1.01})
    with pytest.raises(ExportError, match=message):
        build_bundle(cfg)
    assert not (tmp_path / "b").exists()


def test_refuses_to_replace_what_is_not_a_bundle(short_checkpoint: Path, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ExportError, match="not a bundle"):
            build_bundle(ExportConfig(str(short_checkpoint), out=str(out)))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_model_id_names_the_weights(short_checkpoint: Path, bundle_dir: Path) -> None:
    from simclr_embed.export.onnx_export import weights_digest

    state = load_checkpoint(short_checkpoint)
    digest = weights_digest(state)
    assert load_bundle(bundle_dir).manifest["checkpoint"]["weights_digest"] == digest
    key = next(k for k in state["model"] if k.startswith("encoder.") and "conv" in k)
    state["model"][key] = state["model"][key] + 1e-3  # same config, other weights
    assert weights_digest(state) != digest


def test_the_gates_remedies_and_a_gallery_apart_from_the_report(short_checkpoint: Path, cifar10,
                                                                tmp_path: Path) -> None:
    """What a failed INT8 gate recommends (percentile calibration, the dynamo exporter) exports;
    a gallery larger than the report's subset is embedded at INT8 alone, on the runtime
    provider=auto takes among those that passed the gates."""
    cfg = ExportConfig(str(short_checkpoint), out=str(tmp_path / "b"), exporter="dynamo",
                       calibration_per_class=5, calibration_method="percentile",
                       gallery_per_class=12, compare_per_class=4, test_per_class=5,
                       latency_rounds=1, tolerance=100)
    bundle = load_bundle(build_bundle(cfg))
    m = bundle.manifest
    assert m["metrics"]["gallery_images"] == 40 and m["export"]["exporter"] == "dynamo"
    passed = m["metrics"]["runtimes"]["openvino"]["int8"]["passed"]
    assert m["gallery"]["runtimes"]["int8"] in (("openvino", "cpu") if passed else ("cpu",))
    _, labels, emb = bundle.gallery("int8")
    gallery = stratified_subset(cifar10[0], 12, seed=0)
    assert emb.shape == (120, 512) and labels.tolist() == gallery.labels.tolist()
    ort, _ = run_batches(make_session(bundle.encoder_path("int8")), gallery.images)
    assert float((ort * emb).sum(1).min()) > 0.99
    with pytest.raises(BundleError, match="--gallery-precisions fp32,int8"):
        bundle.gallery("fp32")


def test_entropy_calibration_on_batches_that_do_not_divide(bundle_dir: Path, cifar10,
                                                           tmp_path: Path) -> None:
    """50 images: batches of 32 would leave one of 18, which ORT's histogram stacking refuses."""
    fp32 = load_bundle(bundle_dir).encoder_path("fp32")
    images = cifar10[0].images[:50]
    quantize_int8(fp32, tmp_path / "int8.onnx", images, "entropy")
    ref, _ = run_batches(make_session(fp32), images)
    got, _ = run_batches(make_session(tmp_path / "int8.onnx"), images)
    assert float((ref * got).sum(1).mean()) > 0.95
