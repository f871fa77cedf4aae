"""Smoke tests over every registered model: shapes, finiteness, gradients, factory errors."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.models import MODELS, AgeModel, AgeRegressor, BucketClassifier, count_flops, create_model, fuse_for_inference

VARIANTS = [("age_regressor", "gaussian"), ("age_regressor", "dldl"), ("bucket_classifier", "dldl")]


def _tiny(name: str, head: str, size: int = 32) -> AgeModel:
    return create_model(name, head=head, input_size=size, width=4, depth=1)


@pytest.mark.parametrize(("name", "head"), VARIANTS)
def test_forward_shapes_finite_and_gradients_reach_every_parameter(name: str, head: str) -> None:
    torch.manual_seed(0)
    model = _tiny(name, head)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ages = torch.tensor([5.0, 14.0, 17.0, 60.0])
    out = model(x)
    pred = model.predict(out)
    assert pred.mean.shape == pred.std.shape == (4,)
    assert torch.isfinite(pred.mean).all()
    assert (pred.std > 0).all()
    loss = model.loss(out, ages)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {pname}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {pname}"


def test_features_head_split_composes_to_forward() -> None:
    model = _tiny("age_regressor", "gaussian").eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))


def test_bucket_classifier_probabilities_and_legacy_decisions() -> None:
    model = _tiny("bucket_classifier", "dldl")
    assert isinstance(model, BucketClassifier)
    assert model.bucket_of(torch.tensor([12.9, 13.0, 15.9, 16.0, 17.5, 18.0, 24.9, 25.0])).tolist() == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
    ]
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]])
    assert model.prob_at_least(probs, 18.0).item() == pytest.approx(0.4)
    assert model.prob_at_least(probs, 13.0).item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="not a bucket edge"):
        model.prob_at_least(probs, 21.0)
    pred = model.predict(torch.zeros(1, 5))
    assert pred.probs is not None
    assert pred.probs.sum().item() == pytest.approx(1.0)


def test_factory_errors_say_how_to_fix_the_call() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        create_model("resnet50")
    with pytest.raises(TypeError, match="valid options"):
        create_model("age_regressor", widht=8)
    with pytest.raises(ValueError, match="head must be"):
        create_model("age_regressor", head="laplace")
    assert set(MODELS) == {"age_regressor", "bucket_classifier"}


@pytest.mark.parametrize("size", [64, 112])
def test_input_sizes_and_flops_scale_with_pixels(size: int) -> None:
    model = create_model("age_regressor", input_size=size)
    out = model.eval()(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    assert out.shape == (1, model.config.dldl_bins)
    flops = count_flops(model, size)
    assert flops > 0
    if size == 112:
        ratio = flops / count_flops(create_model("age_regressor", input_size=64), 64)
        assert 2.5 < ratio < 3.5  # conv cost ~ pixels: (112/64)^2 = 3.06


def test_fused_model_matches_unfused_in_eval() -> None:
    torch.manual_seed(1)
    model = _tiny("age_regressor", "gaussian")
    model.train()
    model(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))  # move BN running stats off defaults
    model.eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    expected = model(x)
    fused = fuse_for_inference(model)
    torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    config = ModelConfig(name="age_regressor", input_size=112, width=8)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})
    assert isinstance(create_model(config), AgeRegressor)
