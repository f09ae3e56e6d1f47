"""save_model / load_model and the state helpers used by the Flower client and server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule

from fedeye.errors import ModelError
from fedeye.models import ModelConfig, build_model, load_model, load_state, model_state, save_model


def test_roundtrip_gives_equal_outputs(tmp_path: Path) -> None:
    cfg = ModelConfig(mode="prompt", num_domains=3, num_classes=4)
    model = build_model(cfg).eval()
    images, domain = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    path = tmp_path / "run" / "model.pt"

    save_model(path, model, cfg, metadata={"round": 3, "auc": 0.91})
    loaded, loaded_cfg, metadata = load_model(path)

    assert loaded_cfg == cfg
    assert metadata == {"round": 3, "auc": 0.91}
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    torch.testing.assert_close(loaded.eval()(images, domain=domain), model(images, domain=domain))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind


def test_feature_standardiser_is_saved_with_the_model(tmp_path: Path) -> None:
    cfg = ModelConfig(pool="avg")
    model = build_model(cfg)
    model.feature_norm.mean.fill_(0.25)
    model.feature_norm.std.fill_(3.0)
    save_model(tmp_path / "m.pt", model, cfg)
    loaded, _, _ = load_model(tmp_path / "m.pt")  # no backbone checkpoint needed: the buffers are in the file
    assert torch.equal(loaded.feature_norm.mean, model.feature_norm.mean)
    assert torch.equal(loaded.feature_norm.std, model.feature_norm.std)


def test_model_file_from_before_the_feature_standardiser_loads(tmp_path: Path) -> None:
    cfg = ModelConfig()
    model = build_model(cfg).eval()
    save_model(tmp_path / "m.pt", model, cfg)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if not k.startswith("feature_norm.")}
    torch.save(payload, tmp_path / "old.pt")
    loaded, _, _ = load_model(tmp_path / "old.pt")
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(images), model(images))  # the identity, as before


def test_saved_backbone_path_need_not_exist_when_loading(tmp_path: Path, timm_checkpoint: Path) -> None:
    cfg = ModelConfig(arch="vit-small", img_size=32, backbone_weights=timm_checkpoint)
    save_model(tmp_path / "m.pt", build_model(cfg), cfg.model_copy(update={"backbone_weights": tmp_path / "gone.pth"}))
    _, loaded_cfg, _ = load_model(tmp_path / "m.pt")
    assert loaded_cfg.backbone_weights == tmp_path / "gone.pth"


def test_unserialisable_metadata_is_refused(tmp_path: Path) -> None:
    cfg = ModelConfig()
    with pytest.raises(TypeError, match="JSON"):
        save_model(tmp_path / "m.pt", build_model(cfg), cfg, metadata={"when": object()})
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nope.pt does not exist"):
        load_model(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path: Path) -> None:
    cfg = ModelConfig()
    path = tmp_path / "model.pt"
    save_model(path, build_model(cfg), cfg)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="model.pt is corrupt.*re-save"):
        load_model(path)


def test_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"cls_token": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="not a FedEye model file.*backbone_weights"):
        load_model(path)


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    cfg = ModelConfig(num_classes=2)
    path = tmp_path / "m.pt"
    save_model(path, build_model(cfg), cfg.model_copy(update={"num_classes": 3}))
    with pytest.raises(ModelError, match=r"m.pt: weights do not fit.*head.weight"):
        load_model(path)


def test_state_helpers_strip_the_opacus_prefix() -> None:
    cfg = ModelConfig(num_domains=2)
    source, target = build_model(cfg), build_model(cfg)
    wrapped = GradSampleModule(target)

    state = model_state(GradSampleModule(source))
    load_state(wrapped, {f"_module.{k}": v for k, v in state.items()})

    assert not any(k.startswith("_module.") for k in state)
    assert state.keys() == source.state_dict().keys()
    torch.testing.assert_close(target.state_dict(), source.state_dict())


def test_trainable_only_state_is_small_and_loads_non_strict() -> None:
    cfg = ModelConfig(mode="prompt", num_domains=2)
    source, target = build_model(cfg), build_model(cfg)

    state = model_state(source, trainable_only=True)
    load_state(target, state, strict=False)

    assert set(state) == {"shared_prompts.tokens", "domain_prompts.tokens", "head.weight", "head.bias"}
    torch.testing.assert_close(target.head.weight, source.head.weight)
    with pytest.raises(ModelError, match="missing keys"):
        load_state(target, state)


def test_load_state_accepts_numpy_arrays_from_flower() -> None:
    cfg = ModelConfig()
    source, target = build_model(cfg), build_model(cfg)
    load_state(target, {k: v.numpy() for k, v in model_state(source).items()})
    torch.testing.assert_close(target.state_dict(), source.state_dict())


# ------------------------------------------------------------- files that are not FedEye models


def _saved_payload(tmp_path: Path) -> dict[str, object]:
    cfg = ModelConfig(img_size=32)
    save_model(tmp_path / "good.pt", build_model(cfg), cfg, metadata={"round": 1})
    payload: dict[str, object] = torch.load(tmp_path / "good.pt", weights_only=True)
    return payload


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, I am a text file\n", r"not a readable PyTorch checkpoint \(it starts with b'hell'\)"),
        (b"", "it is empty"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_a_model_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_a_truncated_model_file_is_a_model_error(tmp_path: Path) -> None:
    _saved_payload(tmp_path)
    path = tmp_path / "cut.pt"
    path.write_bytes((tmp_path / "good.pt").read_bytes()[:5000])
    with pytest.raises(ModelError, match="cut.pt is corrupt or truncated"):
        load_model(path)


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a folder"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": None}, r"\['config'\] missing or of the wrong type"),
        ({"state_dict": [1, 2]}, r"\['state_dict'\] missing or of the wrong type"),
        ({"metadata": 5}, r"\['metadata'\] missing or of the wrong type"),
        ({"metadata": "{not json"}, "metadata that is not valid JSON"),
        ({"metadata": "[1, 2]"}, "metadata that is not a JSON object"),
    ],
)
def test_a_damaged_payload_is_a_model_error(tmp_path: Path, change: dict[str, object], message: str) -> None:
    payload = {k: v for k, v in {**_saved_payload(tmp_path), **change}.items() if v is not None}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "bad.pt")


def test_weights_that_are_not_tensors_are_a_model_error(tmp_path: Path) -> None:
    payload = _saved_payload(tmp_path)
    state = payload["state_dict"]
    assert isinstance(state, dict)
    torch.save({**payload, "state_dict": {k: "x" for k in state}}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="is not a named tensor"):
        load_model(tmp_path / "bad.pt")


def test_nan_weights_are_refused_when_loading(tmp_path: Path) -> None:
    payload = _saved_payload(tmp_path)
    state = payload["state_dict"]
    assert isinstance(state, dict)
    broken = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({**payload, "state_dict": broken}, tmp_path / "nan.pt")
    with pytest.raises(ModelError, match="hold NaN or infinity"):
        load_model(tmp_path / "nan.pt")


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))

    torch.save({"format": "fedeye-model", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="corrupt or not a PyTorch file"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()
