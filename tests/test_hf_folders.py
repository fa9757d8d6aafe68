"""transformers save_pretrained folders (vitkit.models.hf_folders): each supported model type builds a vitkit
VisionTransformer that loads strictly and gives transformers' outputs; what is left out is reported; folders
that are not one, or hold an architecture vitkit cannot build, fail with a message naming the path."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.errors import CheckpointError
from vitkit.models import hf_folders
from vitkit.models.hf_folders import SUPPORTED_MODEL_TYPES, is_hf_folder, read_hf_folder
from vitkit.models.vit import VisionTransformer

transformers = pytest.importorskip("transformers")

# 32x32 images, 8x8 patches (4x4 grid), width 32, 2 blocks, MLP 64 wide.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)
LABELS = {0: "cat", 1: "dog", 2: "fish"}


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (tokens, norms, biases, layer scales), so a mis-mapped tensor cannot hide."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _images(n=2):
    return torch.randn(n, 3, 32, 32)


def _clip_text():
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)


# name -> (model_type, transformers model, what to compare)
def _source(name: str):
    T = transformers
    dino = dict(TINY, mlp_ratio=3)  # Dinov2 sizes its MLP by mlp_ratio (intermediate_size is unused)
    cases = {
        "vit": ("vit", lambda: T.ViTModel(T.ViTConfig(**TINY)), "features"),
        "vit_cls": ("vit", lambda: T.ViTForImageClassification(T.ViTConfig(**TINY, id2label=LABELS)), "logits"),
        "deit": ("deit", lambda: T.DeiTModel(T.DeiTConfig(**TINY)), "features"),
        "deit_cls": ("deit", lambda: T.DeiTForImageClassification(T.DeiTConfig(**TINY, id2label=LABELS)), "logits"),
        "deit_teacher": ("deit", lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**TINY,
                                                                                              id2label=LABELS)),
                         "cls_logits"),
        "dinov2": ("dinov2", lambda: T.Dinov2Model(T.Dinov2Config(**dino, layerscale_value=0.5)), "features"),
        "dinov2_cls": ("dinov2", lambda: T.Dinov2ForImageClassification(T.Dinov2Config(**dino, id2label=LABELS)),
                       "dinov2_features"),
        "dinov2_reg": ("dinov2_with_registers", lambda: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**dino, num_register_tokens=3)), "features"),
        "clip_vision": ("clip_vision_model", lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**TINY)), "pooled"),
        "clip_vision_proj": ("clip_vision_model", lambda: T.CLIPVisionModelWithProjection(
            T.CLIPVisionConfig(**TINY, projection_dim=16)), "image_embeds_input"),
        "clip": ("clip", lambda: T.CLIPModel(T.CLIPConfig(vision_config=TINY, text_config=_clip_text(),
                                                          projection_dim=16)), "vision_pooled"),
        "siglip_vision": ("siglip_vision_model", lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**TINY)),
                          "pooled_and_features"),
        "siglip_vision_nohead": ("siglip_vision_model", lambda: T.SiglipVisionModel(
            T.SiglipVisionConfig(**TINY, vision_use_head=False)), "features"),
        "siglip": ("siglip", lambda: T.SiglipModel(T.SiglipConfig(vision_config=TINY, text_config=_clip_text())),
                   "vision_pooled"),
    }
    return cases[name]


def _saved(tmp_path, name, **save_kw):
    model_type, build, compare = _source(name)
    src = _randomise(build())
    src.save_pretrained(tmp_path / name, **save_kw)
    return model_type, src, compare, tmp_path / name


def _vitkit(folder: hf_folders.HFFolder) -> VisionTransformer:
    model = VisionTransformer(**folder.kwargs).eval()
    model.load_state_dict(folder.state_dict, strict=True)
    return model


def _outputs(model: VisionTransformer, src, compare: str, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(vitkit, transformers) pairs for what `compare` names."""
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    if compare == "features":
        return [(feats, src(pixel_values=x).last_hidden_state)]
    if compare == "logits":
        return [(model(x), src(pixel_values=x).logits), (model.forward_head(feats), src(pixel_values=x).logits)]
    if compare == "cls_logits":
        return [(model(x), src(pixel_values=x).cls_logits)]
    if compare == "dinov2_features":
        return [(feats, src.dinov2(pixel_values=x).last_hidden_state)]
    if compare == "pooled":
        return [(pooled, src(pixel_values=x).pooler_output)]
    if compare == "image_embeds_input":  # the pooled feature the (dropped) visual projection reads
        return [(pooled, src.vision_model(pixel_values=x).pooler_output)]
    if compare == "vision_pooled":
        return [(pooled, src.vision_model(pixel_values=x).pooler_output)]
    out = src(pixel_values=x)
    return [(pooled, out.pooler_output), (feats, out.last_hidden_state)]  # pooled_and_features


# ------------------------------------------------------------------------------------ parity per model type
CASES = ["vit", "vit_cls", "deit", "deit_cls", "deit_teacher", "dinov2", "dinov2_cls", "dinov2_reg", "clip_vision",
         "clip_vision_proj", "clip", "siglip_vision", "siglip_vision_nohead", "siglip"]


@pytest.mark.parametrize("name", CASES)
def test_folder_gives_transformers_outputs(tmp_path, name):
    model_type, src, compare, path = _saved(tmp_path, name)
    assert is_hf_folder(path)
    folder = read_hf_folder(path)
    assert folder.model_type == model_type and folder.source == str(path)
    model = _vitkit(folder)
    x = _images()
    with torch.no_grad():
        for ours, theirs in _outputs(model, src, compare, x):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_every_supported_model_type_is_covered_by_a_parity_case():
    assert set(SUPPORTED_MODEL_TYPES) == {_source(n)[0] for n in CASES}


def test_sharded_folder_reads_like_a_single_file(tmp_path):
    _, src, compare, path = _saved(tmp_path, "vit_cls", max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file() and not (path / "model.safetensors").exists()
    shards = {v for v in json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values()}
    assert len(shards) > 1
    model = _vitkit(read_hf_folder(path))
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(pixel_values=x).logits, rtol=0, atol=1e-5)


def _same_state_dict(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=0, atol=0, msg=k)


def test_pytorch_model_bin_folder_reads_like_safetensors(tmp_path):
    path = _saved(tmp_path, "vit")[3]
    expected = read_hf_folder(path).state_dict
    sd = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(sd, path / "pytorch_model.bin")
    _same_state_dict(read_hf_folder(path).state_dict, expected)


@pytest.mark.parametrize("name", ["vit_cls", "deit_teacher", "dinov2_reg", "clip_vision", "siglip_vision"])
def test_in_memory_and_prefixed_layouts_read_alike(tmp_path, name):
    """transformers 5 module names (`layers.N.attention.q_proj`, what `model.state_dict()` gives) and the Hub's
    `vision_model.` prefix of a CLIP/SigLIP vision model read as the save_pretrained layout does."""
    _, src, _, path = _saved(tmp_path, name)
    expected = read_hf_folder(path).state_dict
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if name.startswith(("clip", "siglip")):
        sd = {f"vision_model.{k}": v for k, v in load_file(path / "model.safetensors").items()}
    save_file(sd, str(path / "model.safetensors"))
    _same_state_dict(read_hf_folder(path).state_dict, expected)


def test_non_square_image_builds_a_non_square_grid(tmp_path):
    src = _randomise(transformers.ViTModel(transformers.ViTConfig(**{**TINY, "image_size": [32, 16]})))
    src.save_pretrained(tmp_path)
    folder = read_hf_folder(tmp_path)
    assert folder.kwargs["img_size"] == (32, 16)
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(_vitkit(folder).forward_features(x), src(pixel_values=x).last_hidden_state,
                                   rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ what is built and dropped
def test_classifier_folder_keeps_labels_and_class_count(tmp_path):
    folder = read_hf_folder(_saved(tmp_path, "vit_cls")[3])
    assert folder.labels == ["cat", "dog", "fish"] and folder.kwargs["num_classes"] == 3
    assert folder.kwargs["norm_eps"] == 1e-12 and folder.kwargs["act_layer"] == "gelu"
    backbone = read_hf_folder(_saved(tmp_path, "vit")[3])
    assert backbone.labels is None and backbone.kwargs["num_classes"] == 0
    assert set(backbone.dropped) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert "pooler" in backbone.dropped["pooler.dense.weight"]


def test_deit_distillation_token_is_the_register_token_and_its_head_is_dropped(tmp_path):
    folder = read_hf_folder(_saved(tmp_path, "deit_teacher")[3])
    assert folder.kwargs["reg_tokens"] == 1 and not folder.kwargs["no_embed_class"]
    assert folder.kwargs["num_classes"] == 3 and folder.labels == ["cat", "dog", "fish"]
    assert set(folder.dropped) == {"distillation_classifier.weight", "distillation_classifier.bias"}
    assert "cls_logits" in folder.dropped["distillation_classifier.weight"]


def test_dinov2_classifier_is_dropped_with_its_reason_and_labels_kept(tmp_path):
    folder = read_hf_folder(_saved(tmp_path, "dinov2_cls")[3])
    assert folder.kwargs["num_classes"] == 0 and folder.labels == ["cat", "dog", "fish"]
    assert {"classifier.weight", "classifier.bias", "dinov2.embeddings.mask_token"} == set(folder.dropped)
    assert "mean of patch tokens" in folder.dropped["classifier.weight"]
    assert folder.kwargs["mlp_ratio"] == 3.0 and folder.kwargs["init_values"] is not None


def test_dinov2_registers_fold_the_class_position_into_the_class_token(tmp_path):
    _, src, _, path = _saved(tmp_path, "dinov2_reg")
    folder = read_hf_folder(path)
    assert folder.kwargs["reg_tokens"] == 3 and folder.kwargs["no_embed_class"]
    hf = src.state_dict()
    pe = hf["embeddings.position_embeddings"]
    torch.testing.assert_close(folder.state_dict["cls_token"], hf["embeddings.cls_token"] + pe[:, :1])
    assert folder.state_dict["pos_embed"].shape == (1, 16, 32)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_full_image_text_folder_drops_the_text_tower(tmp_path, name):
    folder = read_hf_folder(_saved(tmp_path, name)[3])
    assert any(k.startswith("text_model.") for k in folder.dropped)
    assert all(not k.startswith("vision_model.") for k in folder.dropped)
    assert "logit_scale" in folder.dropped
    if name == "clip":
        assert {"text_projection.weight", "visual_projection.weight"} <= set(folder.dropped)
        assert folder.kwargs["pre_norm"] and not folder.kwargs["patch_bias"]
        assert folder.kwargs["act_layer"] == "quick_gelu" and folder.kwargs["norm_eps"] == 1e-5
    else:
        assert folder.kwargs["global_pool"] == "map" and not folder.kwargs["class_token"]
        assert folder.kwargs["act_layer"] == "gelu_tanh" and folder.kwargs["norm_eps"] == 1e-6


@pytest.mark.parametrize(("family", "config_class"), [
    ("vit", "ViTConfig"), ("deit", "DeiTConfig"), ("dinov2", "Dinov2Config"),
    ("dinov2_with_registers", "Dinov2WithRegistersConfig"), ("clip", "CLIPVisionConfig"),
    ("siglip", "SiglipVisionConfig"),
])
def test_config_defaults_are_transformers_defaults(family, config_class):
    """A config.json that omits a value means transformers' default: vitkit's table must hold the same."""
    reference = getattr(transformers, config_class)()
    for key, value in hf_folders._FAMILIES[family].defaults.items():
        if hasattr(reference, key):
            assert getattr(reference, key) == value, key


def test_minimal_config_uses_the_family_defaults(tmp_path):
    _, src, _, path = _saved(tmp_path, "vit_cls")
    cfg = json.loads((path / "config.json").read_text())
    kept = {"model_type", "id2label", *TINY}
    (path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k in kept}))
    folder = read_hf_folder(path)
    assert folder.kwargs["norm_eps"] == 1e-12 and folder.kwargs["qkv_bias"]
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(_vitkit(folder)(x), src(pixel_values=x).logits, rtol=0, atol=1e-5)


def test_mlp_ratio_rebuilds_an_mlp_width_that_the_plain_ratio_loses():
    # 61 / 56 * 56 == 60.99999..., which int() makes a 60-wide MLP.
    assert int(56 * (61 / 56)) == 60
    assert int(56 * hf_folders._mlp_ratio(61, 56, "cfg")) == 61


# ------------------------------------------------------------------------------------ Hugging Face cache
def _fake_hub_snapshot(cache, repo_id, folder, files=None):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for p in folder.iterdir():
        if files is None or p.name in files:
            (snapshot / p.name).write_bytes(p.read_bytes())
    return snapshot


@pytest.fixture
def no_download(monkeypatch):
    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def test_hub_name_reads_the_cached_snapshot(tmp_path, monkeypatch, no_download):
    _, src, _, path = _saved(tmp_path, "dinov2")
    snapshot = _fake_hub_snapshot(tmp_path / "hub", "org/dino-fake", path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert is_hf_folder("hf-hub:org/dino-fake") and not is_hf_folder("hf-hub:org/missing")
    folder = read_hf_folder("hf-hub:org/dino-fake")
    assert folder.source == f"hf-hub:org/dino-fake ({snapshot})"
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(_vitkit(folder).forward_features(x), src(pixel_values=x).last_hidden_state,
                                   rtol=0, atol=1e-5)


def test_hub_name_under_hf_home_works_too(tmp_path, monkeypatch, no_download):
    path = _saved(tmp_path, "vit")[3]
    _fake_hub_snapshot(tmp_path / "home" / "hub", "org/vit-fake", path)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert read_hf_folder("hf-hub:org/vit-fake").model_type == "vit"


def test_uncached_hub_name_is_a_clear_error(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as e:
        read_hf_folder("hf-hub:org/missing")
    assert "org/missing" in str(e.value) and str(tmp_path / "empty") in str(e.value)
    assert "hf download org/missing" in str(e.value)


def test_hub_snapshot_without_config_is_a_clear_error(tmp_path, monkeypatch, no_download):
    path = _saved(tmp_path, "vit")[3]
    snapshot = _fake_hub_snapshot(tmp_path / "hub", "org/weights-only", path, files={"model.safetensors"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not is_hf_folder("hf-hub:org/weights-only")
    with pytest.raises(CheckpointError) as e:
        read_hf_folder("hf-hub:org/weights-only")
    assert str(snapshot) in str(e.value) and "no config.json" in str(e.value)
    assert "hf download org/weights-only config.json" in str(e.value)


# ------------------------------------------------------------------------------------ errors
def _error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        read_hf_folder(path)
    return str(e.value)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **changes}))


def test_folder_without_config_names_what_it_found(tmp_path):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "notes.txt").write_text("x")
    assert not is_hf_folder(tmp_path)
    msg = _error(tmp_path)
    assert str(tmp_path) in msg and "no config.json" in msg and "save_pretrained" in msg
    assert "model.safetensors, notes.txt" in msg


def test_missing_path_and_file_path_are_clear_errors(tmp_path):
    assert "no such folder" in _error(tmp_path / "nope") and str(tmp_path / "nope") in _error(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"")
    msg = _error(tmp_path / "model.safetensors")
    assert "not a folder" in msg and "load_pretrained" in msg


def test_unreadable_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{model_type: vit")
    msg = _error(tmp_path)
    assert str(tmp_path / "config.json") in msg and "JSON" in msg and "save_pretrained" in msg


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "beit"}))
    msg = _error(tmp_path)
    assert str(tmp_path / "config.json") in msg and "'beit'" in msg
    assert all(t in msg for t in SUPPORTED_MODEL_TYPES)


def test_folder_without_weights(tmp_path):
    path = _saved(tmp_path, "vit")[3]
    (path / "model.safetensors").unlink()
    msg = _error(path)
    assert str(path) in msg and "no weights file" in msg and "model.safetensors.index.json" in msg
    assert "found config.json" in msg


@pytest.mark.parametrize(("name", "change", "expected"), [
    ("dinov2", dict(use_swiglu_ffn=True), "use_swiglu_ffn=True"),
    ("vit", dict(hidden_act="relu"), "hidden_act='relu'"),
    ("vit", dict(patch_size=[8, 4]), "patch_size=[8, 4]"),
    ("vit", dict(image_size=30), "image_size=30"),
])
def test_architecture_vitkit_cannot_represent_is_refused(tmp_path, name, change, expected):
    path = _saved(tmp_path, name)[3]
    _edit_config(path, **change)
    msg = _error(path)
    assert str(path / "config.json") in msg and expected in msg and "expected" in msg
    if "hidden_act" in change:
        assert "gelu, quick_gelu, gelu_pytorch_tanh, gelu_new" in msg


def test_swiglu_checkpoint_itself_is_refused(tmp_path):
    src = _randomise(transformers.Dinov2Model(transformers.Dinov2Config(**TINY, use_swiglu_ffn=True)))
    src.save_pretrained(tmp_path)
    assert "use_swiglu_ffn=True" in _error(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = _saved(tmp_path, "vit")[3]
    _edit_config(path, image_size=64, num_hidden_layers=1)
    msg = _error(path)
    assert str(path) in msg and "pos_embed: checkpoint (1, 17, 32), config (1, 65, 32)" in msg
    assert "blocks: checkpoint has 2, config num_hidden_layers=1" in msg


def test_unknown_checkpoint_key_is_refused_not_dropped(tmp_path):
    path = _saved(tmp_path, "vit")[3]
    sd = load_file(path / "model.safetensors")
    sd["encoder.layer.0.attention.attention.q_norm.weight"] = torch.ones(16)
    save_file(sd, str(path / "model.safetensors"))
    msg = _error(path)
    assert str(path) in msg and "encoder.layer.0.attention.attention.q_norm.weight" in msg and "'vit'" in msg


# ------------------------------------------------------------------------------------ through create_model
@pytest.mark.parametrize("name", ["vit_cls", "dinov2_reg", "clip_vision", "siglip_vision"])
def test_create_model_from_a_folder_needs_no_name(tmp_path, name):
    """The user's one line: the folder's config picks the architecture; num_classes puts a fresh head on it."""
    _, src, compare, path = _saved(tmp_path, name)
    model = vitkit.create_model(pretrained=str(path)).eval()
    with torch.no_grad():
        for ours, theirs in _outputs(model, src, compare, _images()):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    tuned = vitkit.create_model(pretrained=path, num_classes=5, img_size=48)  # positions resampled to 48 px
    assert tuned(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_folder_into_a_named_model_of_another_family_is_refused(tmp_path):
    _, _, _, path = _saved(tmp_path, "clip_vision")
    with pytest.raises(CheckpointError, match="pre_norm"):
        vitkit.create_model("vit_tiny_patch16_224", pretrained=path, img_size=32, patch_size=8, embed_dim=32,
                            depth=2, num_heads=2)


def test_no_name_and_no_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="registered name"):
        vitkit.create_model(pretrained=tmp_path / "nothing.pth")


def test_create_model_from_a_folder_without_config_names_the_folder(tmp_path):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"weights_only: a folder without config\.json .*model\.safetensors"):
        vitkit.create_model(pretrained=str(folder), num_classes=3)
