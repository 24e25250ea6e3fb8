#!/usr/bin/env python3
"""Python PyTorch reference for bench/run: the same transfer-learning epochs graft runs, the way a
PyTorch user writes them (torchvision model, a DataLoader-free tensor pipeline, eager mode).

Data: the first N Fashion-MNIST training images (Debian's dataset-fashion-mnist), resized to SIZE px,
3 channels, ImageNet-normalised, in memory (so decoding is out of the comparison on both sides).
Strategies:
  feature-extract  frozen backbone under no_grad + eval every epoch, linear head trained (no cache)
  fine-tune        the last stage (layer4 / features.18) and the head trainable, the rest frozen
Prints one JSON line: {"strategy", "model", "epoch_seconds": [...], "images": N}.
"""
import argparse, gzip, json, time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision


def load_images(path, count, size):
    with gzip.open(path + "/train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: count * 784]
    with gzip.open(path + "/train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:count]
    x = torch.from_numpy(raw.copy()).float().div(255).view(count, 1, 28, 28)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels.astype(np.int64))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18")
    p.add_argument("--strategy", default="feature-extract")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = load_images(a.data, a.images, a.size)
    model = getattr(torchvision.models, a.model)(weights=None)
    if a.model.startswith("resnet"):
        head_in = model.fc.in_features
        model.fc = torch.nn.Linear(head_in, 10)
        head, top = model.fc, model.layer4
    else:
        head_in = model.classifier[1].in_features
        model.classifier[1] = torch.nn.Linear(head_in, 10)
        head, top = model.classifier[1], model.features[18]
    for q in model.parameters():
        q.requires_grad = False
    for q in head.parameters():
        q.requires_grad = True
    if a.strategy == "fine-tune":
        for q in top.parameters():
            q.requires_grad = True
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    seconds = []
    for epoch in range(a.epochs):
        start = time.perf_counter()
        order = torch.randperm(a.images)
        if a.strategy == "feature-extract":
            model.eval()
        else:
            model.train()
        for i in range(0, a.images, a.batch):
            idx = order[i : i + a.batch]
            if a.strategy == "feature-extract":
                with torch.no_grad():
                    if a.model.startswith("resnet"):
                        m = model
                        f = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x[idx]))))))))
                    else:
                        f = model.features(x[idx])
                    f = f.mean((2, 3))
                logits = head(f)
            else:
                logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"strategy": a.strategy, "model": a.model, "epoch_seconds": seconds, "images": a.images}))


if __name__ == "__main__":
    main()
