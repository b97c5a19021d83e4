"""The paper's architectures. Every classifier is ``head(features(x))`` so that methods that
need the penultimate features (Soft reg.) can reach them."""
import torch
from torch import nn

from limit.config import TrainingError
from limit.registry import ARCH_SIZES, dataset_info, get_method


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
    raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCH_SIZES)}")


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


def build_networks(cfg, num_classes):
    info = dataset_info(cfg["dataset"])
    method = get_method(cfg["method"])
    kw = dict(in_channels=info.channels, image_size=info.size, imagenet_weights=cfg["imagenet_weights"])
    classifier = build_model(cfg["arch"], num_classes, dropout=cfg["hparams"]["dropout"],
                             head_bias=method.head_bias, **kw)
    q = build_model(cfg["arch"], num_classes, q_network=True, **kw) if method.q_network else None
    if cfg["bn_init"] == "authors":  # on the CPU, before the networks move: the same statistics on any device
        noise = torch.Generator().manual_seed(cfg["seed"])
        for model in (classifier, q) if q is not None else (classifier,):
            authors_bn_warmup(model, cfg["arch"], (info.channels, info.size, info.size), noise)
    return classifier, q


def make_optimizer(models, hp):
    """One Adam over all networks; weight decay (coupled L2) only on weights of 2 or more dimensions."""
    params = [p for m in models if m is not None for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.Adam([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"])


def copy_parameters(src_state, dst, what):
    """Copy parameters (not BatchNorm running statistics) of a CE model into ``dst`` by name."""
    own = dict(dst.named_parameters())
    for name, value in src_state.items():
        if name in own:
            if own[name].shape != value.shape:
                raise TrainingError(f"cannot initialise {what} from the CE model: {name} has shape "
                                    f"{tuple(value.shape)}, expected {tuple(own[name].shape)}")
            with torch.no_grad():
                own[name].copy_(value)
    missing = [n for n, b in src_state.items() if n not in own and not _is_buffer_name(n)]
    if missing:
        raise TrainingError(f"cannot initialise {what} from the CE model: no parameter named {missing[0]}")


def _is_buffer_name(name):
    return name.rsplit(".", 1)[-1] in {"running_mean", "running_var", "num_batches_tracked"}


@torch.no_grad()
def predict(model, split, batch_size, augment=False, generator=None):
    """(indices, logits): softmax-free logits of a model (eval mode) over a split and the indices of the examples
    they came from. A streamed split leaves out the images it cannot read: score against ``labels[indices]``."""
    model.eval()
    idx, logits = zip(*[(i, model(x).float()) for i, x in split.batches(batch_size, generator=generator,
                                                                        augment=augment)])
    return torch.cat(idx), torch.cat(logits)


def _conv_text(conv):
    kernel = " × ".join(map(str, conv.kernel_size))
    return f"{conv.out_channels} filters, {kernel} kernels, stride {conv.stride[0]}, padding {conv.padding[0]}"


def architecture_rows(model, input_shape=(1, 1, 28, 28)):
    """Paper Table 3 rows read off a classifier: one row per Conv2d/Linear with the BN/ReLU that follow it. The
    report renders Table 3 from ``limit/report/paper_numbers/table3.csv``, which a test checks against these rows
    of ``mnist_cnn()``: the report stays torch-free."""
    rows = []
    x = torch.zeros(input_shape)
    model.eval()
    with torch.no_grad():
        for module in [*model.features, model.head]:
            x = module(x)
            if isinstance(module, nn.Conv2d):
                rows.append(dict(layer="Conv", parameters=[_conv_text(module)], modules=[module]))
            elif isinstance(module, nn.Linear):
                rows.append(dict(layer="FC", parameters=[f"{module.out_features} units"], modules=[module]))
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                rows[-1]["parameters"].append("batch normalization")
                rows[-1]["modules"].append(module)
            elif isinstance(module, nn.ReLU):
                rows[-1]["parameters"].append("ReLU")
            else:
                continue
            rows[-1]["output"] = " × ".join(map(str, x.shape[1:]))
    if rows[-1]["parameters"][-1] != "ReLU":
        rows[-1]["parameters"].append("linear activation")
    return [dict(layer=r["layer"], parameters=", ".join(r["parameters"]), output=r["output"],
                 weights=sum(p.numel() for m in r["modules"] for p in m.parameters())) for r in rows]
