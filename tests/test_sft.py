"""Rung 1: config parsing, export round trip, a VL forward/backward with images, exact resume."""
import json
import os

import pytest
import torch

import train_sft
from conftest import TINY_ARGS, crash_then_resume
from nanosafe import checkpoint, config, data, model


def test_config_overrides_types_and_unknown_keys(tmp_path):
    cfg = config.parse(["optim.lr=0.5", "model.vision=false", f"out_dir={tmp_path}/x", "stage=m3a"])
    assert cfg.optim.lr == 0.5 and cfg.model.vision is False and cfg.io.out_dir == f"{tmp_path}/x"
    assert cfg.data.labels == "general_rule"  # the stage preset
    with pytest.raises(KeyError, match=r"unknown config key 'optim.lrr'.*did you mean optim.lr"):
        config.parse(["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"'optim.steps': expected int"):
        config.parse(["optim.steps=many"])
    preset = tmp_path / "p.py"
    preset.write_text("overrides = {'optim.lr': 1e-6}\nstages = {'m3b': {'optim.steps': 7}}\n")
    cfg = config.parse(["--config", str(preset), "stage=m3b"])
    assert cfg.optim.lr == 1e-6 and cfg.optim.steps == 7 and cfg.config_name == "p"
    config.save(cfg, verbose=False)
    assert json.load(open(os.path.join(cfg.io.out_dir, "config.json")))["optim"]["steps"] == 7


def test_vl_forward_backward_with_images(tiny):
    cfg, paths, bundle = tiny
    rows = data.read_jsonl(paths["sft"], need_response=True)
    batch = data.collate([data.encode_sft(bundle, r, cfg.data) for r in
                          [r for r in rows if r["images"]][:2] + [r for r in rows if not r["images"]][:2]],
                         bundle.tokenizer.pad_token_id)
    bundle.model.zero_grad()
    loss, n = train_sft.token_loss_sum(bundle, batch)
    loss.backward()
    assert torch.isfinite(loss) and n > 0
    grads = {k: p.grad for k, p in bundle.model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # built from scratch, the vision tower trains in SFT (model.make freezes only a loaded checkpoint's)
    assert all(p.requires_grad for k, p in bundle.model.named_parameters() if "visual" in k)
    # the image changes the loss: the vision tower's output reaches the language model
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    with torch.no_grad():
        assert train_sft.token_loss_sum(bundle, other)[0] != loss
    bundle.model.zero_grad()


def test_export_roundtrip_identical_logits(tiny, tmp_path):
    cfg, paths, bundle = tiny
    model.export(bundle, str(tmp_path / "m"))
    assert os.path.exists(tmp_path / "m" / "model.safetensors")
    loaded = model.load(str(tmp_path / "m"), cfg.model)
    rows = data.read_jsonl(paths["heldout"], need_response=True)
    rows = [r for r in rows if r["images"]][:1] + rows[:2]
    batch = data.collate([data.encode_sft(bundle, r, cfg.data) for r in rows], bundle.tokenizer.pad_token_id)
    batch2 = data.collate([data.encode_sft(loaded, r, cfg.data) for r in rows], loaded.tokenizer.pad_token_id)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])  # tokenizer + chat template survive
    assert torch.equal(batch["pixel_values"], batch2["pixel_values"])  # image processor survives
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    bundle.model.eval(), loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(bundle.model(**inputs).logits, loaded.model(**inputs).logits)
    bundle.model.train()


def test_image_pixel_bounds_reach_the_processor(tiny, tmp_path):
    from PIL import Image
    _, _, bundle = tiny
    model.export(bundle, str(tmp_path / "m"))
    big, small = Image.new("RGB", (2000, 2000), (200, 40, 40)), Image.new("RGB", (8, 8))

    def pixels(*args):  # the processed image's pixel count (patches of 14 x 14) under data.*_pixels args
        proc = model.make(config.parse(TINY_ARGS + [f"init={tmp_path / 'm'}", *args])).image_processor
        return lambda im: int(proc(images=[im], return_tensors="pt")["image_grid_thw"].prod()) * 14 * 14
    assert pixels()(big) == 56 * 56  # 0 keeps the processor's own: the tiny world's 56 x 56
    lo, hi = 64 * 28 * 28, 256 * 28 * 28
    bounded = pixels(f"data.min_pixels={lo}", f"data.max_pixels={hi}")
    assert hi * 0.9 <= bounded(big) <= hi and lo <= bounded(small) <= lo * 1.1
    with pytest.raises(ValueError, match=r"data.min_pixels / data.max_pixels: the image bounds are 200705 > 200704"):
        pixels(f"data.min_pixels={hi + 1}", f"data.max_pixels={hi}")
    with pytest.raises(ValueError, match=r"config key data.max_pixels: must be >= 0"):
        config.parse(["data.max_pixels=-1"])


def _params(out_dir):
    state = torch.load(os.path.join(out_dir, "ckpt", checkpoint.FILE), weights_only=True)
    return state["model"]


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    args = TINY_ARGS + ["optim.steps=6", "io.save_every=3"]
    train_sft.main(args + [f"out_dir={tmp_path}/full/sft"])
    crash_then_resume(train_sft, args + [f"out_dir={tmp_path}/cut/sft"], 3, monkeypatch)
    full, cut = _params(tmp_path / "full" / "sft"), _params(tmp_path / "cut" / "sft")
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "sft" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) == list(range(1, 7))  # replayed steps are not logged twice
    assert os.path.exists(tmp_path / "cut" / "sft" / "model" / "model.safetensors")
