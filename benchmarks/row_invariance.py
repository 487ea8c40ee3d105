"""Is one input-gradient step of an image independent of the batch it sits in?

Places one image at the start, middle and end of batches of many sizes (random neighbours and
targets), with 1, 2 and 3 threads, and prints every case whose gradient or loss differs, bit for
bit, from the image's step in a batch of 8 with one thread. Output of the last run:
``benchmarks/row-invariance-cpu.txt``. Run: ``python benchmarks/row_invariance.py``.
"""
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from conftest import TinyCNN
import timm
torch.manual_seed(0)
SIZES = [8, 1, 2, 3, 4, 5, 7, 9, 16, 17, 33, 64, 128, 257]
THREADS = (1, 2, 3)

def grad_rows(model, x, t):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), t, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g, loss.detach()

def study(name, model, shape, n):
    model.eval().requires_grad_(False)
    g0 = torch.Generator().manual_seed(1)
    probe = torch.rand(1, *shape, generator=g0).contiguous(memory_format=torch.channels_last)
    ref = {}
    sizes = SIZES
    for threads in THREADS:
        torch.set_num_threads(threads)
        for b in sizes:
            for pos in sorted({0, b // 2, b - 1}):
                others = torch.rand(b, *shape, generator=g0)
                others[pos] = probe[0]
                others = others.contiguous(memory_format=torch.channels_last)
                tt = torch.randint(0, n, (b,), generator=g0); tt[pos] = 1
                g, l = grad_rows(model, others, tt)
                if b == 8 and pos == 0 and threads == 1:
                    ref["g"], ref["l"] = g[pos], l[pos]
                same = torch.equal(g[pos], ref["g"]) and torch.equal(l[pos], ref["l"])
                if not same:
                    print(f"{name} threads={threads} batch={b} pos={pos}: differs by {(g[pos]-ref['g']).abs().max():.2e}")
    print(f"{name}: done ({len(sizes)} sizes x 3 positions x 3 thread counts)")

study("tinycnn-6x6", TinyCNN(3, 1, 6), (1, 6, 6), 3)
m = timm.create_model("resnet18", num_classes=10, in_chans=1)
m.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()
study("resnet18-8x8", m, (1, 8, 8), 10)
m = timm.create_model("resnet18", num_classes=100)
m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()
SIZES = [8, 1, 3, 4, 5, 9, 33, 128]
study("resnet18-32x32", m, (3, 32, 32), 100)
