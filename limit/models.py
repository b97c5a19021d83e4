"""The paper's architectures. Every classifier is ``head(features(x))`` so that methods that
need the penultimate features (Soft reg.) can reach them."""
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, features, head):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x):
        return self.head(self.features(x))


def _conv(cin, cout, k, stride, pad):
    return [nn.Conv2d(cin, cout, k, stride, pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def mnist_cnn(num_classes=10, in_channels=1, fc_batchnorm=False, head_bias=True):
    """The 4-layer CNN of paper Table 3 (about 218K parameters).

    ``fc_batchnorm`` gives the q-network variant (BatchNorm1d on the FC-128 layer); ``head_bias=False``
    gives Soft reg.'s bias-free last layer U.
    """
    fc = [nn.Linear(256, 128)] + ([nn.BatchNorm1d(128)] if fc_batchnorm else []) + [nn.ReLU(inplace=True)]
    features = nn.Sequential(
        *_conv(in_channels, 32, 4, 2, 1), *_conv(32, 32, 4, 2, 1), *_conv(32, 64, 3, 2, 0), *_conv(64, 256, 3, 1, 0),
        nn.Flatten(), *fc)
    return Classifier(features, nn.Linear(128, num_classes, bias=head_bias))


def mlp(num_classes=10, in_features=784, width=512, depth=4, dropout=0.0):
    """Figure 1's MLP: 4 x [Linear 512 -> BatchNorm1d -> ReLU (-> Dropout)] -> Linear 512 -> K."""
    layers = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return Classifier(nn.Sequential(*layers), nn.Linear(width, num_classes))


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions: adaptive average pooling to 1x1 and flatten, with a deterministic
    CUDA backward (``nn.AdaptiveAvgPool2d`` has none)."""

    def forward(self, x):
        return x.mean((2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet34_cifar(num_classes=10):
    """CIFAR ResNet-34 (3x3 stem, stride 1, no max-pool; about 21.3M parameters)."""
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            layers.append(BasicBlock(cin, width, stride if i == 0 else 1))
            cin = width
    layers.append(GlobalAvgPool())
    return Classifier(nn.Sequential(*layers), nn.Linear(512, num_classes))


def resnet50(num_classes=14, imagenet_weights=None):
    """torchvision's ResNet-50, randomly initialised as in the authors' code.

    ``imagenet_weights``: optional path to a torchvision ImageNet state dict (a user's local copy);
    the final layer is replaced by a ``num_classes``-way one.
    """
    import torchvision
    net = torchvision.models.resnet50()
    if imagenet_weights:
        net.load_state_dict(torch.load(imagenet_weights, map_location="cpu", weights_only=True))
    head = nn.Linear(net.fc.in_features, num_classes)
    net.avgpool, net.fc = GlobalAvgPool(), nn.Identity()
    return Classifier(net, head)


ARCHITECTURES = {"cnn", "mlp", "resnet34", "resnet50"}


def build_model(arch, num_classes, in_channels=1, image_size=28, dropout=0.0, q_network=False,
                head_bias=True, imagenet_weights=None):
    """Build a classifier (or its q-network twin) by architecture name."""
    if arch == "cnn":
        return mnist_cnn(num_classes, in_channels, fc_batchnorm=q_network, head_bias=head_bias)
    if arch == "mlp":
        # The q-network is the MLP without dropout, as the authors'.
        return mlp(num_classes, in_channels * image_size * image_size, dropout=0.0 if q_network else dropout)
    if arch == "resnet34":
        return resnet34_cifar(num_classes)
    if arch == "resnet50":
        return resnet50(num_classes, imagenet_weights)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")


@torch.no_grad()
def authors_bn_warmup(model, arch, input_shape, generator):
    """Warm BatchNorm running statistics on noise exactly as the authors' network builder does.

    Their builder (``modules/nn_utils.py``: ``parse_feed_forward`` / ``infer_shape``) infers shapes by passing a
    batch of 4 N(0, 1) inputs, in training mode, through the layers built so far: before each layer spec and once
    at the end (CNN, MLP), or once through a whole known network (the ResNets). Every pass updates the BatchNorm
    running statistics that early-stopped runs are evaluated with (docs/reproduction.md). The noise comes from
    ``generator``; the global torch RNG (dropout masks during the passes) is left as it was.
    """
    model.train()
    if arch in ("cnn", "mlp"):
        layers = [*model.features, model.head]
        # A layer spec of the authors' configs starts at each Conv2d, Linear or Flatten.
        spec_starts = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear, nn.Flatten))]
        prefixes = [layers[:s] for s in spec_starts] + [layers]
    else:
        prefixes = [[model]]
    with torch.random.fork_rng(devices=[]):
        for prefix in prefixes:
            x = torch.randn((4, *input_shape), generator=generator)
            for layer in prefix:
                x = layer(x)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
