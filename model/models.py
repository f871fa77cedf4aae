"""The age models and the one factory that builds them by name.

Both models share one compact CNN backbone so the regression model and the legacy bucket baseline
differ only in their head and loss: comparisons between them are then about the output, not the
capacity. Normalisation lives inside the model (buffers from the config), so a caller that feeds
raw uint8 pixels cannot get the preprocessing wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig


@dataclass(frozen=True, slots=True)
class Prediction:
    """Batched model outputs in years; `probs` only for models with a categorical output."""

    mean: Tensor
    std: Tensor
    probs: Tensor | None = None


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Plain conv-BN-ReLU stages, each halving the resolution: cheap on CPU and easy to fuse."""

    in_scale: Tensor
    in_shift: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.width
        layers: list[nn.Module] = [_conv_block(3, width, 2)]
        cin = width
        for stage in range(config.stages):
            cout = width * 2 ** (stage + 1)
            for block in range(config.depth):
                layers.append(_conv_block(cin, cout, 2 if block == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        scale = torch.tensor([1.0 / (255.0 * s) for s in config.std]).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(config.mean, config.std, strict=True)]).view(1, 3, 1, 1)
        # Not persistent: the config is the source of truth for preprocessing.
        self.register_buffer("in_scale", scale, persistent=False)
        self.register_buffer("in_shift", shift, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) uint8 or float pixels in 0..255."""
        x = x.to(self.in_scale.dtype) * self.in_scale - self.in_shift
        x = self.body(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class AgeModel(nn.Module):
    """Shared shape of every age model: features, head, loss, and a decoding of the head output."""

    registry_name: ClassVar[str] = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = Backbone(config)

    def forward_features(self, x: Tensor) -> Tensor:
        out: Tensor = self.backbone(x)
        return out

    def forward_head(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def loss(self, output: Tensor, ages: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, output: Tensor) -> Prediction:
        raise NotImplementedError


class AgeRegressor(AgeModel):
    """Continuous age with its uncertainty.

    Two heads, chosen by `config.head`:
    - "gaussian": mean and log-variance trained with the heteroscedastic Gaussian NLL.
    - "dldl": a distribution over 1-year bins trained with DLDL-v2 (KL to a Gaussian label
      distribution plus an L1 term on its expectation); mean and std are the moments of the bins.
    """

    registry_name = "age_regressor"
    # Floor on the predicted std: a frame never claims sub-year certainty, which keeps the fused
    # belief downstream from collapsing on one overconfident frame.
    min_std: ClassVar[float] = 0.5
    label_sigma: ClassVar[float] = 2.0
    bins: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = self.backbone.num_features
        self.centre = (config.age_min + config.age_max) / 2
        self.scale = (config.age_max - config.age_min) / 2
        if config.head == "gaussian":
            self.head = nn.Linear(c, 2)
        else:
            self.head = nn.Linear(c, config.dldl_bins)
            bins = torch.linspace(config.age_min, config.age_max, config.dldl_bins)
            self.register_buffer("bins", bins, persistent=False)

    def forward_head(self, features: Tensor) -> Tensor:
        out: Tensor = self.head(features)
        return out

    def _gaussian(self, output: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.centre + self.scale * output[:, 0]
        std = F.softplus(output[:, 1]) * self.scale / 10 + self.min_std
        return mean, std

    def loss(self, output: Tensor, ages: Tensor) -> Tensor:
        ages = ages.to(output.dtype)
        if self.config.head == "gaussian":
            mean, std = self._gaussian(output.float())
            return F.gaussian_nll_loss(mean, ages, std**2, full=False)
        logp = F.log_softmax(output.float(), dim=1)
        target = torch.exp(-0.5 * ((self.bins[None, :] - ages[:, None]) / self.label_sigma) ** 2)
        target = target / target.sum(dim=1, keepdim=True)
        kl = F.kl_div(logp, target, reduction="batchmean")
        expectation = (logp.exp() * self.bins).sum(dim=1)
        return kl + F.l1_loss(expectation, ages) / self.scale

    def predict(self, output: Tensor) -> Prediction:
        output = output.float()
        if self.config.head == "gaussian":
            mean, std = self._gaussian(output)
            return Prediction(mean, std)
        probs = F.softmax(output, dim=1)
        mean = (probs * self.bins).sum(dim=1)
        var = (probs * (self.bins[None, :] - mean[:, None]) ** 2).sum(dim=1)
        return Prediction(mean, var.sqrt().clamp_min(self.min_std))


class BucketClassifier(AgeModel):
    """The legacy baseline: softmax over fixed age buckets (<13, 13-15, 16-17, 18-24, 25+)."""

    registry_name = "bucket_classifier"
    edges: Tensor
    centres: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.head = nn.Linear(self.backbone.num_features, config.num_buckets)
        self.register_buffer("edges", torch.tensor(config.bucket_edges), persistent=False)
        self.register_buffer("centres", torch.tensor(config.bucket_centres), persistent=False)

    def forward_head(self, features: Tensor) -> Tensor:
        out: Tensor = self.head(features)
        return out

    def bucket_of(self, ages: Tensor) -> Tensor:
        return torch.bucketize(ages.float(), self.edges, right=True)

    def loss(self, output: Tensor, ages: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), self.bucket_of(ages))

    def predict(self, output: Tensor) -> Prediction:
        probs = F.softmax(output.float(), dim=1)
        mean = (probs * self.centres).sum(dim=1)
        var = (probs * (self.centres[None, :] - mean[:, None]) ** 2).sum(dim=1)
        return Prediction(mean, var.sqrt().clamp_min(AgeRegressor.min_std), probs)

    def prob_at_least(self, probs: Tensor, threshold: float) -> Tensor:
        """P(age >= threshold) as the old system saw it: the mass of buckets starting at or above it.

        Only meaningful at a bucket edge; anywhere else the legacy model cannot answer, which is the
        reason it is being replaced.
        """
        edges = list(self.config.bucket_edges)
        if threshold not in edges:
            raise ValueError(f"threshold {threshold} is not a bucket edge {edges}; the legacy model cannot decide it")
        first = edges.index(threshold) + 1
        return probs[:, first:].sum(dim=1)


MODELS: dict[str, type[AgeModel]] = {cls.registry_name: cls for cls in (AgeRegressor, BucketClassifier)}


def create_model(name: str | ModelConfig, **overrides: Any) -> AgeModel:
    """Build a model by registry name (plus config overrides) or from a full config."""
    if isinstance(name, ModelConfig):
        config = dataclasses.replace(name, **overrides) if overrides else name
    else:
        if name not in MODELS:
            raise ValueError(
                f"unknown model {name!r}; choose one of {sorted(MODELS)}, e.g. create_model('age_regressor')"
            )
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"create_model({name!r}) got unknown options {unknown}; valid options: {sorted(fields)}")
        config = ModelConfig(name=name, **overrides)
    if config.name not in MODELS:
        raise ValueError(f"config names unknown model {config.name!r}; choose one of {sorted(MODELS)}")
    config.validate()
    return MODELS[config.name](config)


def count_flops(model: nn.Module, input_size: int) -> int:
    """Forward FLOPs for one frame (a multiply-add counts as 2), from conv and linear layers."""
    total = 0

    def conv_hook(module: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        per_out = (module.in_channels // module.groups) * kh * kw
        total += 2 * per_out * out.numel() // out.shape[0]

    def linear_hook(module: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += 2 * module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device  # a model on the GPU counts alike
            model(torch.zeros(1, 3, input_size, input_size, dtype=torch.uint8, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def fuse_for_inference(model: AgeModel) -> AgeModel:
    """Fold each BatchNorm into its conv (eval mode only): fewer passes over memory on CPU."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for block in model.backbone.body:
        if isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d):
            conv = block[0]
            assert isinstance(conv, nn.Conv2d)
            block[0] = fuse_conv_bn_eval(conv, block[1])
            block[1] = nn.Identity()
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
