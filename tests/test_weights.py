"""Checkpoint loading (vitkit.weights): each source format gives the source model's outputs, pos_embed is
resampled, a mismatched head is replaced and reported, and bad files fail with a message naming them."""
import re

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import vitkit
from vitkit.errors import CheckpointError
from vitkit.models.vit import VisionTransformer
from vitkit.nn.embed import resample_pos_embed
from vitkit.weights import LoadReport, load_checkpoint_file, load_pretrained

# One tiny config shared by every source: 32x32 images, 8x8 patches (4x4 grid), width 64, 2 blocks.
TINY = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)


def _vitkit(img_size=32, num_classes=5, **kw) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, num_classes=num_classes, **{**TINY, **kw}).eval()


def _timm(img_size=32, num_classes=5, **kw):
    vit = timm.models.vision_transformer.VisionTransformer
    return vit(img_size=img_size, num_classes=num_classes, **{**TINY, **kw}).eval()


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (prefix tokens, norms, biases too), so a mis-mapped tensor cannot hide."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _images(n=2, size=32):
    return torch.randn(n, 3, size, size)


def _assert_body_equal(model: torch.nn.Module, sd: dict, skip=("head.",)) -> None:
    for k, v in model.state_dict().items():
        if not k.startswith(skip):
            torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------------ parity per format
def test_timm_checkpoint_gives_timm_outputs(tmp_path):
    src = _randomise(_timm())
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    model = _vitkit()
    report = load_pretrained(model, tmp_path / "timm.pth", strict=True)
    assert report.format == "timm" and report.ok and not report.dropped and not report.resampled
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=1e-5)


def test_timm_register_token_checkpoint_gives_timm_outputs(tmp_path):
    """no_embed_class + register tokens: pos_embed covers the patches only."""
    cfg = dict(reg_tokens=4, no_embed_class=True)
    src = _randomise(_timm(**cfg))
    save_file(src.state_dict(), str(tmp_path / "reg.safetensors"))
    model = _vitkit(**cfg)
    assert load_pretrained(model, tmp_path / "reg.safetensors", strict=True).ok
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=1e-5)


def test_torchvision_checkpoint_gives_torchvision_outputs(tmp_path):
    src = _randomise(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128, num_classes=5
    )).eval()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "vit_b_16.safetensors"))
    model = _vitkit()
    report = load_pretrained(model, tmp_path / "vit_b_16.safetensors", strict=True)
    assert report.format == "torchvision" and report.ok and not report.dropped
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=1e-5)


# transformers 5 names its modules `layers.N.attention.q_proj`; checkpoints on the Hub keep the older names.
_HUB_NAMES = [
    (r"\.layers\.(\d+)\.attention\.q_proj\.", r".encoder.layer.\1.attention.attention.query."),
    (r"\.layers\.(\d+)\.attention\.k_proj\.", r".encoder.layer.\1.attention.attention.key."),
    (r"\.layers\.(\d+)\.attention\.v_proj\.", r".encoder.layer.\1.attention.attention.value."),
    (r"\.layers\.(\d+)\.attention\.o_proj\.", r".encoder.layer.\1.attention.output.dense."),
    (r"\.layers\.(\d+)\.mlp\.fc1\.", r".encoder.layer.\1.intermediate.dense."),
    (r"\.layers\.(\d+)\.mlp\.fc2\.", r".encoder.layer.\1.output.dense."),
    (r"\.layers\.(\d+)\.", r".encoder.layer.\1."),
]


def _hub_layout(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        k = "." + k
        for pattern, repl in _HUB_NAMES:
            k, n = re.subn(pattern, repl, k)
            if n:
                break
        out[k[1:]] = v
    return out


def _hf_config(cls, **kw):
    # layer_norm_eps: transformers defaults to 1e-12, timm/torchvision/vitkit use 1e-6.
    return cls(image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=2, hidden_size=64,
               intermediate_size=128, num_labels=5, layer_norm_eps=1e-6, **kw)


@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_transformers_classifier_gives_transformers_logits(tmp_path, layout):
    transformers = pytest.importorskip("transformers")
    src = _randomise(transformers.ViTForImageClassification(_hf_config(transformers.ViTConfig))).eval()
    sd = src.state_dict()
    if layout == "hub":
        sd = _hub_layout(sd)
        assert "vit.encoder.layer.0.attention.attention.query.weight" in sd
    torch.save(sd, tmp_path / "pytorch_model.bin")
    model = _vitkit()
    report = load_pretrained(model, tmp_path / "pytorch_model.bin", strict=True)
    assert report.format == "transformers" and report.ok and not report.dropped
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x).logits, rtol=0, atol=1e-5)


def test_transformers_backbone_gives_its_features_and_reports_the_fresh_head(tmp_path):
    transformers = pytest.importorskip("transformers")
    src = _randomise(transformers.ViTModel(_hf_config(transformers.ViTConfig))).eval()
    save_file(dict(src.state_dict()), str(tmp_path / "model.safetensors"))
    model = _vitkit()
    report = load_pretrained(model, tmp_path / "model.safetensors")
    assert report.head_reinitialised and set(report.missing) == {"head.weight", "head.bias"}
    assert set(report.dropped) == {"pooler.dense.weight", "pooler.dense.bias"} and not report.unexpected
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), src(x).last_hidden_state, rtol=0, atol=1e-5)


def test_transformers_deit_distillation_token_is_dropped_and_reported(tmp_path):
    transformers = pytest.importorskip("transformers")
    src = _randomise(transformers.DeiTForImageClassificationWithTeacher(_hf_config(transformers.DeiTConfig))).eval()
    sd = src.state_dict()
    model = _vitkit()
    with pytest.raises(CheckpointError, match="distillation"):
        load_pretrained(model, sd)  # strict by default: without the token the features are not the source's
    report = load_pretrained(model, sd, strict=False)
    assert "deit.embeddings.distillation_token" in report.dropped and "distillation" in str(report)
    assert not report.ok and report.lossy and not report.head_reinitialised  # cls_classifier became the head
    pe = sd["deit.embeddings.position_embeddings"]
    torch.testing.assert_close(model.pos_embed, torch.cat([pe[:, :1], pe[:, 2:]], 1), rtol=0, atol=0)
    torch.testing.assert_close(model.head.weight, sd["cls_classifier.weight"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------ adapting to the model
@pytest.mark.parametrize("cfg", [{}, dict(reg_tokens=4, no_embed_class=True)], ids=["cls", "reg4_no_embed_class"])
def test_pos_embed_is_resampled_to_a_larger_image_keeping_prefix_positions(tmp_path, cfg):
    src = _randomise(_timm(**cfg))
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    model = _vitkit(img_size=64, **cfg)
    report = load_pretrained(model, tmp_path / "timm.pth", strict=True)
    assert "4x4 -> 8x8" in report.resampled["pos_embed"] and "4x4 -> 8x8" in str(report)
    prefix = 0 if cfg else 1
    assert model.pos_embed.shape == (1, prefix + 64, 64)
    old = src.pos_embed.detach()
    torch.testing.assert_close(model.pos_embed[:, :prefix], old[:, :prefix], rtol=0, atol=0)  # class position exact
    torch.testing.assert_close(model.pos_embed, resample_pos_embed(old, (8, 8), (4, 4), num_prefix_tokens=prefix))
    with torch.no_grad():
        assert torch.isfinite(model(_images(size=64))).all()


def test_head_of_another_class_count_is_replaced_and_reported(tmp_path, caplog):
    src = _randomise(_timm(num_classes=5))
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    model = _vitkit(num_classes=3)
    fresh_head = model.head.weight.detach().clone()
    with caplog.at_level("WARNING", logger="vitkit.weights"):
        report = load_pretrained(model, tmp_path / "timm.pth", strict=True)  # a replaced head is allowed
    assert report.head_reinitialised and set(report.dropped) == {"head.weight", "head.bias"}
    assert "5 classes, model 3" in report.dropped["head.weight"] and "re-initialised" in str(report)
    assert "classifier head re-initialised" in caplog.text  # logged as a warning, not only returned
    # the new head starts near zero (BEiT/MAE fine-tuning init): its model init scaled by 1e-3, bias 0
    torch.testing.assert_close(model.head.weight, fresh_head * 1e-3, rtol=0, atol=0)
    assert not model.head.bias.any()
    _assert_body_equal(model, src.state_dict())
    with pytest.raises(CheckpointError, match=r"num_classes=5"):
        load_pretrained(_vitkit(num_classes=3), tmp_path / "timm.pth", num_classes_changed_ok=False)
    headless = _vitkit(num_classes=0)  # a feature extractor: the checkpoint's head is dropped, nothing re-initialised
    report = load_pretrained(headless, tmp_path / "timm.pth", strict=True)
    assert set(report.dropped) == {"head.weight", "head.bias"} and not report.head_reinitialised and report.ok
    _assert_body_equal(headless, src.state_dict())


def test_strict_refuses_a_missing_key_without_touching_the_model(tmp_path):
    sd = _randomise(_timm()).state_dict()
    del sd["blocks.1.norm2.weight"]
    sd["extra.weight"] = torch.zeros(2)
    model = _vitkit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing blocks\.1\.norm2\.weight.*unexpected extra\.weight"):
        load_pretrained(model, sd)  # strict is the default
    _assert_body_equal(model, before, skip=())
    report = load_pretrained(model, sd, strict=False)
    assert report.missing == ["blocks.1.norm2.weight"] and report.unexpected == ["extra.weight"] and not report.ok
    assert "missing" in str(report) and "blocks.1.norm2.weight" in str(report)


def test_checkpoint_of_another_width_names_the_tensors(tmp_path):
    sd = _timm(embed_dim=32).state_dict()
    expected = r"patch_embed\.proj\.weight: checkpoint \(32, 3, 8, 8\), model \(64, 3, 8, 8\)"
    with pytest.raises(CheckpointError, match=expected):
        load_pretrained(_vitkit(), sd)


# ------------------------------------------------------------------------------------ wrappers and files
def test_compiled_ddp_and_lightning_checkpoints_load(tmp_path):
    src = _randomise(_vitkit())
    compiled = torch.compile(src).state_dict()  # keys start with `_orig_mod.`; compiling happens on first call
    assert all(k.startswith("_orig_mod.") for k in compiled)
    torch.save(compiled, tmp_path / "compiled.pt")
    lightning = {
        "epoch": 3,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {**{f"model.{k}": v for k, v in compiled.items()}, "criterion.weight": torch.ones(5)},
        "optimizer_states": [],
    }
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 1}, tmp_path / "ddp.pth")
    for name in ("compiled.pt", "last.ckpt", "ddp.pth"):
        assert set(load_checkpoint_file(tmp_path / name)) == set(src.state_dict()), name
        model = _vitkit()
        assert load_pretrained(model, tmp_path / name, strict=True).ok
        _assert_body_equal(model, src.state_dict(), skip=())


def test_create_model_pretrained_loads_and_resamples(tmp_path):
    src = _randomise(vitkit.create_model("vit_nano_patch4_32", num_classes=10)).eval()
    save_file(src.state_dict(), str(tmp_path / "nano.safetensors"))
    same = vitkit.create_model("vit_nano_patch4_32", num_classes=10, pretrained=tmp_path / "nano.safetensors").eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(same(x), src(x), rtol=0, atol=0)
    path = str(tmp_path / "nano.safetensors")
    bigger = vitkit.create_model("vit_nano_patch4_32", img_size=48, num_classes=3, pretrained=path)
    assert bigger.pos_embed.shape == (1, 1 + 144, 128)
    _assert_body_equal(bigger, src.state_dict(), skip=("head.", "pos_embed"))


@pytest.mark.parametrize("name, content", [
    ("random.pth", lambda sd_bytes: bytes(range(256)) * 8),
    ("truncated.pth", lambda sd_bytes: sd_bytes[: len(sd_bytes) // 2]),
    ("random.safetensors", lambda sd_bytes: b"\x00\x01not a safetensors header" * 10),
])
def test_corrupted_file_names_the_file(tmp_path, name, content):
    torch.save(_vitkit().state_dict(), tmp_path / "good.pth")
    (tmp_path / name).write_bytes(content((tmp_path / "good.pth").read_bytes()))
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: cannot be read .*expected"):
        load_pretrained(_vitkit(), tmp_path / name)


def test_missing_file_and_unknown_suffix_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth: no such file"):
        load_checkpoint_file(tmp_path / "nowhere.pth")
    (tmp_path / "weights.npz").write_bytes(b"x")
    expected = r"weights\.npz: unknown file type '\.npz'; expected one of .*\.safetensors"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint_file(tmp_path / "weights.npz")


def test_resnet_state_dict_is_refused_listing_its_keys(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(_vitkit(), tmp_path / "resnet18.pth")
    msg = str(err.value)
    assert "resnet18.pth" in msg and "not a Vision Transformer" in msg
    assert "conv1.weight" in msg and "patch_embed.proj.weight" in msg and "conv_proj.weight" in msg


def test_report_reads_as_a_summary():
    report = LoadReport(source="a.pth", format="timm")
    assert str(report) == "loaded a.pth (timm format)\n  every key matched" and report.ok


def test_reset_head_keeps_a_fresh_classifier_even_when_the_checkpoint_head_fits(tmp_path):
    import vitkit

    source = vitkit.create_model("vit_tiny_patch4_32", num_classes=5, img_size=16, depth=1, embed_dim=32, num_heads=2)
    torch.save(source.state_dict(), tmp_path / "src.pth")
    torch.manual_seed(123)
    fresh = vitkit.create_model("vit_tiny_patch4_32", num_classes=5, img_size=16, depth=1, embed_dim=32, num_heads=2)
    torch.manual_seed(123)
    model = vitkit.create_model("vit_tiny_patch4_32", pretrained=tmp_path / "src.pth", reset_head=True, num_classes=5,
                                img_size=16, depth=1, embed_dim=32, num_heads=2)
    assert torch.equal(model.head.weight, fresh.head.weight * 1e-3)  # fresh, scaled near zero
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    from vitkit.weights import load_pretrained

    report = load_pretrained(fresh, tmp_path / "src.pth", strict=True, reset_head=True)
    assert (report.dropped == {"head.weight": "reset_head=True", "head.bias": "reset_head=True"}
            and report.head_reinitialised)


def test_checkpoint_head_that_does_not_fit_without_num_classes_is_a_clear_error(tmp_path):
    import vitkit
    from vitkit.errors import CheckpointError

    source = vitkit.create_model("vit_tiny_patch4_32", num_classes=10, img_size=16, depth=1, embed_dim=32, num_heads=2)
    torch.save(source.state_dict(), tmp_path / "ten.pth")
    with pytest.raises(CheckpointError, match=r"10 classes.*1000 classes.*num_classes=10"):
        vitkit.create_model("vit_tiny_patch4_32", pretrained=tmp_path / "ten.pth", img_size=16, depth=1, embed_dim=32,
                            num_heads=2)
    model = vitkit.create_model("vit_tiny_patch4_32", pretrained=tmp_path / "ten.pth", num_classes=3, img_size=16,
                                depth=1, embed_dim=32, num_heads=2)
    assert model.head.weight.shape == (3, 32)


# ------------------------------------------------------------------------------------ patch-size resampling
def _per_patch_resize(x: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """Resize every p x p patch of `x` on its own to q x q with the operator timm's `resample_patch_embed` inverts."""
    b, c, h, w = x.shape
    gh, gw = h // p, w // p
    t = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, p, p)
    t = torch.nn.functional.interpolate(t, size=(q, q), mode="bicubic", antialias=True, align_corners=False)
    return t.reshape(b, gh, gw, c, q, q).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * q, gw * q)


def test_patch_embed_of_another_patch_size_is_resampled_flexivit_style():
    torch.manual_seed(0)
    src = _randomise(_timm(img_size=32, patch_size=8))
    model = _vitkit(img_size=16, patch_size=4)  # same 4x4 grid, so pos_embed keeps its shape
    report = load_pretrained(model, src.state_dict(), strict=True)
    assert report.ok and "8x8 -> 4x4" in report.resampled["patch_embed.proj.weight"]
    assert "pos_embed" not in report.resampled and model.patch_embed.proj.weight.shape == (64, 3, 4, 4)
    assert "resampled patch_embed.proj.weight" in str(report)
    _assert_body_equal(model, src.state_dict(), skip=("patch_embed.proj.weight",))
    # Downsampling: w' = pinv(B^T) w is the least-squares fit of <x, w> by <Bx, w'>, close on smooth images.
    smooth32 = torch.nn.functional.interpolate(torch.randn(4, 3, 8, 8), size=32, mode="bicubic", align_corners=False)
    small16 = torch.nn.functional.interpolate(smooth32, size=16, mode="bicubic", antialias=True, align_corners=False)
    random_model = _vitkit(img_size=16, patch_size=4)
    with torch.no_grad():
        ref = src.patch_embed(smooth32)
        err = (model.patch_embed(small16) - ref).norm() / ref.norm()
        random_err = (random_model.patch_embed(small16) - ref).norm() / ref.norm()
    assert err < 0.3 and err < 0.3 * random_err, (err, random_err)  # measured: ~0.16 vs ~1.0


def test_patch_embed_upsampling_is_exact_and_same_size_is_the_identity():
    src = _randomise(_timm(img_size=16, patch_size=4))
    model = _vitkit(img_size=32, patch_size=8)
    report = load_pretrained(model, src.state_dict(), strict=True)
    assert "4x4 -> 8x8" in report.resampled["patch_embed.proj.weight"]
    # Upsampling B has full column rank, so <Bx, pinv(B^T) w> = <x, w> for every patch x: outputs match.
    x16 = _images(size=16)
    with torch.no_grad():
        torch.testing.assert_close(model(_per_patch_resize(x16, 4, 8)), src(x16), rtol=0, atol=1e-4)
    same = _vitkit()
    report = load_pretrained(same, _randomise(_timm()).state_dict())
    assert not report.resampled
    import timm.layers
    w = torch.randn(8, 3, 8, 8)
    assert timm.layers.resample_patch_embed(w, new_size=[8, 8]) is w


def test_patch_size_mismatch_without_resampling_is_a_clear_error():
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight.*resample_patch_embed=True"):
        load_pretrained(_vitkit(img_size=16, patch_size=4), _timm().state_dict(), resample_patch_embed=False)


# ------------------------------------------------------------------------------------ Hugging Face cache
def _fake_hub_cache(root, repo_id, sd, filename="model.safetensors"):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    path = repo / "snapshots" / commit / filename
    if filename.endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("name", ["hf-hub:timm/vit_tiny_patch16_224.fake", "timm/vit_tiny_patch16_224.fake"])
def test_hub_name_loads_from_the_local_cache(tmp_path, monkeypatch, name):
    cache = tmp_path / "hub"
    src = _randomise(_timm())
    _fake_hub_cache(cache, "timm/vit_tiny_patch16_224.fake", src.state_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # read at call time (huggingface_hub reads it at import)
    monkeypatch.chdir(tmp_path)  # `timm/...` must not exist as a relative path
    model = _vitkit()
    report = load_pretrained(model, name, strict=True)
    assert report.ok and report.source.startswith("hf-hub:timm/vit_tiny_patch16_224.fake")
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=1e-5)


def test_hub_name_falls_back_to_pytorch_model_bin_and_works_in_create_model(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    src = _randomise(vitkit.create_model("vit_nano_patch4_32", num_classes=10)).eval()
    _fake_hub_cache(cache, "timm/nano.fake", src.state_dict(), filename="pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = vitkit.create_model("vit_nano_patch4_32", num_classes=10, pretrained="hf-hub:timm/nano.fake").eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


def test_uncached_hub_name_is_a_clear_error_and_nothing_is_downloaded(tmp_path, monkeypatch):
    cache = tmp_path / "empty-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(_vitkit(), "hf-hub:timm/vit_tiny_patch16_224.missing")
    msg = str(e.value)
    assert "timm/vit_tiny_patch16_224.missing" in msg and str(cache) in msg
    assert "HF_HUB_CACHE" in msg and "hf download timm/vit_tiny_patch16_224.missing" in msg
    assert not cache.exists()
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        load_pretrained(_vitkit(), "hf-hub:no-slash")
