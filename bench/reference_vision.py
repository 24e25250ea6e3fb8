#!/usr/bin/env python3
"""The PyTorch side of bench/vision (Debian's python3-torch 1.13 and python3-torchvision 0.14); measures
what bench/vision_bench.cpp measures for graft, the same way, and prints one JSON object.

  reference_vision.py forward --model NAME --path eager|best [--batch 32] [--size 224] [--reps 5]
      Frozen-backbone forward (pooled features: the classifier replaced by Identity), eval mode.
      eager: the torchvision module under torch.no_grad(), NCHW, as a PyTorch user runs it.
      best:  torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model))), PyTorch's best
             CPU path (conv-bn folding, oneDNN prepacked convolutions).
  reference_vision.py finetune --model NAME --top PREFIX [--batch 32] [--size 224] [--steps 4]
      Parameters before PREFIX frozen and their BatchNorms in eval mode (the usual transfer recipe), a new
      10-class Linear, SGD momentum 0.9; zero_grad, forward, cross-entropy, backward, step.
  reference_vision.py matmul [--n 2048] [--reps 5]
  reference_vision.py pipeline --images LIST [--size 224] [--reps 3]
      PIL decode + torchvision Resize(256) + CenterCrop(224) + ToTensor + Normalize on one thread.
Every run reports peak_rss_mb (ru_maxrss).
"""
import argparse, json, resource, statistics, time

import torch
import torchvision
from PIL import Image
from torchvision import transforms


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(name, classes):
    model = getattr(torchvision.models, name)()
    if name == "vit_b_16":
        model.heads = torch.nn.Identity() if classes == 0 else torch.nn.Linear(768, classes)
    elif name.startswith("resnet"):
        model.fc = torch.nn.Identity() if classes == 0 else torch.nn.Linear(model.fc.in_features, classes)
    else:  # mobilenet_v2
        last = model.classifier[-1]
        model.classifier[-1] = torch.nn.Identity() if classes == 0 else torch.nn.Linear(last.in_features, classes)
    return model


def forward(a):
    torch.manual_seed(0)
    model = build(a.model, 0).eval()
    images = torch.randn(a.batch, 3, a.size, a.size)
    autocast = a.precision == "bf16"
    if autocast and a.model == "vit_b_16":
        # torch 1.13's fused attention (_native_multi_head_attention) refuses autocast's mixed types; the
        # whole model in bf16 is PyTorch's bf16 path for it (no casts: at least as fast as autocast).
        model, images, autocast = model.to(torch.bfloat16), images.to(torch.bfloat16), False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if a.path == "best":
            model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))
        features = model(images)  # warm-up (and, for best, the profiling runs of the JIT)
        model(images)
        times = []
        for _ in range(a.reps):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return {"mode": "forward", "model": a.model, "path": a.path, "batch": a.batch, "size": a.size,
            "img_per_s": a.batch / statistics.median(times), "features": features.shape[1],
            "precision": a.precision}


def finetune(a):
    torch.manual_seed(0)
    model = build(a.model, 10)
    head = "fc" if a.model.startswith("resnet") else "classifier"
    trainable = lambda n: n.startswith(a.top + ".") or n.startswith(head + ".")
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name))
    model.train()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not trainable(name + "."):
            m.eval()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    images = torch.randn(a.batch, 3, a.size, a.size)
    labels = torch.randint(0, 10, (a.batch,))
    times = []
    for step in range(a.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if step > 0:
            times.append(time.perf_counter() - start)
    return {"mode": "finetune", "model": a.model, "top": a.top, "batch": a.batch, "size": a.size,
            "img_per_s": a.batch / statistics.median(times),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "precision": a.precision}


def matmul(a):
    x, y = torch.randn(a.n, a.n), torch.randn(a.n, a.n)
    x @ y
    times = []
    for _ in range(a.reps):
        start = time.perf_counter()
        x @ y
        times.append(time.perf_counter() - start)
    return {"mode": "matmul", "n": a.n, "gflop_per_s": 2.0 * a.n ** 3 / statistics.median(times) / 1e9}


def pipeline(a):
    paths = [line.strip() for line in open(a.images) if line.strip()]
    transform = transforms.Compose([
        transforms.Resize(int(a.size / 0.875)), transforms.CenterCrop(a.size), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    times, checksum = [], 0.0
    for _ in range(a.reps):
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                checksum += float(transform(image.convert("RGB"))[0, 0, 0])
        times.append(time.perf_counter() - start)
    return {"mode": "pipeline", "images": len(paths), "img_per_s": len(paths) / statistics.median(times),
            "checksum": checksum}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["forward", "finetune", "matmul", "pipeline"])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--path", default="eager", choices=["eager", "best"])
    p.add_argument("--top", default="layer4")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--images")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: forward (and loss) under torch.autocast('cpu', torch.bfloat16)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(1 if a.mode == "pipeline" else a.threads)
    out = {"forward": forward, "finetune": finetune, "matmul": matmul, "pipeline": pipeline}[a.mode](a)
    out["threads"] = torch.get_num_threads()
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
