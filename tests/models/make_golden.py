#!/usr/bin/python3
"""Golden references for graft's image and video model zoo: torchvision 0.14 models, randomly initialised.

For each architecture this writes, into --out:
  <arch>.weights.safetensors  the full state_dict (num_batches_tracked included, as int64)
  <arch>.io.safetensors       pixel_values (2, 3, N, N), logits (2, 1000), features (2, C): the
                              forward_features map averaged over H, W; __metadata__ carries num_params.
                              Video archs (VIDEO_ARCHS): pixel_values (2, 3, 8, N/2, N/2) clips, logits
                              (2, 400), features averaged over T, H, W
                              For TRAIN_MODE_ARCHS also train_logits: the logits in train mode right
                              after torch.manual_seed(train_seed) (__metadata__), which fixes the
                              stochastic depth and dropout masks
  <arch>.stamp                what the files were made from; an arch whose stamp matches is skipped

BatchNorm is made non-trivial (torchvision's init is weight 1, bias 0, mean 0, var 1): weight and bias
are drawn at random, then the running statistics are measured on a calibration batch in train mode (so
activations keep a realistic scale through 150 layers) and perturbed, so the test exercises every BN
tensor. Reference: torchvision/models/{resnet,vgg,mobilenetv2,efficientnet,inception,video/resnet}.py
(torchvision 0.14).
InceptionV3 is built as graft's plain inception_v3 is: aux_logits=False, transform_input=False, torchvision's
init_weights=True, and is made at max(--size, MIN_SIZE) px (128 at the default 64: it needs >= 75).
The video ResNets (r3d_18, mc3_18, r2plus1d_18) take 8-frame clips at half of --size (32 px at the default
64; at 224, 112 px, the frame size of their Kinetics weights): their cost grows with T x H x W.

Run with Debian's python (python3-torch 1.13, python3-torchvision 0.14):
  /usr/bin/python3 tests/models/make_golden.py --out build/golden --size 64 [--archs resnet50,vgg16]
Set GRAFT_ACCEPT=1 to regenerate even when the stamps match.
"""
import argparse
import copy
import hashlib
import json
import os
import struct
import sys
import time

import torch
import torchvision

# arch -> seed; fixed so the references are reproducible run to run.
ARCHS = {
    "resnet18": 1018,
    "resnet34": 1034,
    "resnet50": 1050,
    "resnet101": 1101,
    "resnet152": 1152,
    "vgg16": 2016,
    "vgg16_bn": 2116,
    "vgg19": 2019,
    "vgg19_bn": 2119,
    "mobilenet_v2": 3002,
    "resnet50_keras": 5050,
    "efficientnet_b0": 4000,
    "inception_v3": 4003,
    "r3d_18": 6018,
    "mc3_18": 6118,
    "r2plus1d_18": 6218,
}

# torchvision.models.video archs: they take (N, 3, T, H, W) clips and have Kinetics-400's 400 classes.
VIDEO_ARCHS = {"r3d_18", "mc3_18", "r2plus1d_18"}
VIDEO_FRAMES = 8  # r3d_18 and r2plus1d_18 stride time by 8 (to 1 frame); mc3_18 keeps all 8

# Architectures whose training-mode forward draws random numbers (stochastic depth, dropout) in an
# order graft must reproduce, or is cheap enough to check anyway (the video ResNets: BatchNorm3d on batch
# statistics): their io file also holds train_logits.
TRAIN_MODE_ARCHS = {"efficientnet_b0"} | VIDEO_ARCHS

# Smallest input an arch is tested at, whatever --size says. InceptionV3 needs >= 75 px (torchvision's
# min_size); at 128 its last grid is still 2 x 2, so the final pooling averages more than one cell.
MIN_SIZE = {
    "inception_v3": 128,
}

# BatchNorm randomisation ranges (see randomise_batchnorm) that differ from the default. InceptionV3 runs
# up to 47 BatchNorms deep in eval mode, and every BN that enlarges its channel beyond the calibrated scale
# (gamma > 1, running variance scaled below the measured one) compounds: with the default ranges its
# features reach ~200 and float32 rounding alone (torch float32 vs float64) differs by 6e-4. Ranges that
# only shrink keep them ~20 and that rounding noise ~4e-5, as a trained network's would be.
BN_RANGES = {
    "inception_v3": {"gamma": (0.5, 1.0), "var_scale": (1.0, 1.4)},
}

# Feature extractor of the archs without a `features` module: their blocks in forward order.
INCEPTION_V3_FEATURES = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                         "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                         "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]

# torch dtype -> safetensors dtype
DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        t = t.view(torch.int16)
    array = t.numpy()
    if sys.byteorder != "little":  # safetensors is little-endian
        array = array.byteswap()
    return array.tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} in the safetensors layout (the `safetensors` package is not in Debian)."""
    header = {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has dtype {t.dtype}, which safetensors lacks")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():  # one tensor at a time: VGG's state is 550 MB
            f.write(tensor_bytes(t))
    os.replace(tmp, path)


class KerasResNet50(torchvision.models.ResNet):
    """Keras applications' ResNet50 (keras/applications/resnet.py: ResNet50, stack1, block1), built from
    torchvision's modules so the names are torchvision's: the stride of a block sits on its first 1x1
    convolution (v1), every convolution has a bias, BatchNorm eps is 1.001e-5, and the network reads BGR
    (the weights were trained with 'caffe' preprocessing), i.e. it flips the channels of its input."""

    def __init__(self):
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3])
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Conv2d):
                    conv = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                           child.stride, child.padding, bias=True)
                    with torch.no_grad():
                        conv.weight.copy_(child.weight)
                        conv.bias.uniform_(-0.1, 0.1)
                    setattr(module, name, conv)
                elif isinstance(child, torch.nn.BatchNorm2d):
                    child.eps = 1.001e-5
        for block in self.modules():
            if isinstance(block, torchvision.models.resnet.Bottleneck):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)

    def forward(self, x):
        return super().forward(x.flip(1))


BUILDERS = {"resnet50_keras": KerasResNet50}


def build(arch):
    if arch in BUILDERS:
        return BUILDERS[arch]()
    if arch in VIDEO_ARCHS:
        return getattr(torchvision.models.video, arch)(weights=None, num_classes=400)
    return getattr(torchvision.models, arch)(weights=None, num_classes=1000)


def input_shape(arch, size, batch):
    """(batch, 3, size, size), or for video (batch, 3, VIDEO_FRAMES, size // 2, size // 2)."""
    if arch in VIDEO_ARCHS:
        return (batch, 3, VIDEO_FRAMES, size // 2, size // 2)
    return (batch, 3, size, size)


def input_label(arch, size):
    shape = input_shape(arch, size, 1)
    return f"{shape[2]}x{shape[3]}px" if arch in VIDEO_ARCHS else f"{size}px"  # frames x px


def residual_branch_ends(model):
    """The BatchNorm that closes each residual branch (torchvision's zero_init_residual targets)."""
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.video.resnet import BasicBlock as VideoBasicBlock

    ends = set()
    for m in model.modules():
        if isinstance(m, Bottleneck):
            ends.add(m.bn3)
        elif isinstance(m, BasicBlock):
            ends.add(m.bn2)
        elif isinstance(m, VideoBasicBlock):
            ends.add(m.conv2[1])  # conv2 = (conv, BN)
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            ends.add(m.conv[-1])
        elif isinstance(m, MBConv) and m.use_res_connect:
            ends.add(m.block[-1][1])  # the projection's Conv2dNormActivation: conv, BN (no activation)
    return ends


@torch.no_grad()
def randomise_batchnorm(model, calibration_shape, gamma=(0.5, 1.5), var_scale=(0.7, 1.4)):
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d))]
    if not bns:
        return
    # Trained ResNets have small gammas where a residual branch ends. With gammas near 1 the residual
    # stream grows to ~100 over ResNet-152's 50 blocks, and float32 summation-order noise alone (torch
    # with 1 vs 2 threads differs by 1e-3 there) would exceed the test's 1e-4 tolerance.
    ends = residual_branch_ends(model)
    for bn in bns:
        bn.weight.uniform_(0.1, 0.4) if bn in ends else bn.weight.uniform_(*gamma)
        bn.bias.uniform_(-0.5, 0.5)
        bn.momentum = 1.0  # the next train-mode pass overwrites the running stats with its batch stats
    model.train()
    model(torch.randn(*calibration_shape))
    for bn in bns:
        std = bn.running_var.sqrt()
        bn.running_mean.add_(0.2 * std * torch.randn_like(std))
        bn.running_var.mul_(torch.empty_like(std).uniform_(*var_scale))
        bn.momentum = 0.1
        bn.num_batches_tracked.fill_(int(torch.randint(1, 100000, ()).item()))
    model.eval()


@torch.no_grad()
def feature_map(arch, model, x):
    if arch.startswith("resnet"):
        if isinstance(model, KerasResNet50):
            x = x.flip(1)
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))
    if arch in VIDEO_ARCHS:
        x = model.stem(x)
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))
    if arch == "inception_v3":
        for name in INCEPTION_V3_FEATURES:
            x = getattr(model, name)(x)
        return x
    return model.features(x)  # vgg*, mobilenet_v2, efficientnet_*


def stamp_text(arch, size):
    with open(os.path.abspath(__file__), "rb") as f:
        script = hashlib.sha256(f.read()).hexdigest()[:16]
    return json.dumps({"arch": arch, "size": size, "seed": ARCHS[arch], "torch": torch.__version__,
                       "torchvision": torchvision.__version__, "script": script}, sort_keys=True)


def read_text(path):
    with open(path) as f:
        return f.read()


def make(arch, size, out):
    paths = [os.path.join(out, f"{arch}.{kind}.safetensors") for kind in ("weights", "io")]
    stamp_path = os.path.join(out, f"{arch}.stamp")
    stamp = stamp_text(arch, size)
    if os.environ.get("GRAFT_ACCEPT") != "1" and all(os.path.exists(p) for p in paths):
        if os.path.exists(stamp_path) and read_text(stamp_path) == stamp:
            print(f"[golden] {arch}: up to date ({input_label(arch, size)})", flush=True)
            return
    start = time.time()
    torch.manual_seed(ARCHS[arch])
    if arch == "inception_v3":
        model = torchvision.models.inception_v3(weights=None, num_classes=1000, aux_logits=False,
                                                transform_input=False, init_weights=True)
    else:
        model = build(arch)
    randomise_batchnorm(model, input_shape(arch, size, 4), **BN_RANGES.get(arch, {}))
    model.eval()
    x = torch.randn(*input_shape(arch, size, 2))
    with torch.no_grad():
        logits = model(x)
        fmap = feature_map(arch, model, x)
        features = fmap.mean(tuple(range(2, fmap.dim())))  # over (H, W), video (T, H, W)
    io = {"pixel_values": x, "logits": logits, "features": features}
    meta = {"arch": arch, "size": size, "torchvision": torchvision.__version__}
    if arch in TRAIN_MODE_ARCHS:
        # On a copy: a train-mode pass updates the running statistics that the weights file must hold.
        training = copy.deepcopy(model).train()
        meta["train_seed"] = ARCHS[arch] + 1
        torch.manual_seed(meta["train_seed"])
        with torch.no_grad():
            io["train_logits"] = training(x)
    num_params = sum(p.numel() for p in model.parameters())
    if os.path.exists(stamp_path):
        os.remove(stamp_path)  # a half-written set must never look current
    write_safetensors(paths[0], model.state_dict())
    write_safetensors(paths[1], io, {**meta, "num_params": num_params})
    with open(stamp_path, "w") as f:
        f.write(stamp)
    print(f"[golden] {arch}: {input_label(arch, size)}, {num_params} params, "
          f"logits |max|={logits.abs().max():.3g}, "
          f"features |max|={features.abs().max():.3g}, {time.time() - start:.1f}s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=64, help="input height = width (default 64)")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset")
    args = parser.parse_args()
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"unknown arch(s) {unknown}; known: {', '.join(ARCHS)}")
    if args.size < 32:
        parser.error("--size must be at least 32 (VGG and ResNet downsample by 32)")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for arch in archs:
        make(arch, max(args.size, MIN_SIZE.get(arch, 0)), args.out)


if __name__ == "__main__":
    main()
