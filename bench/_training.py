"""Training helpers of the benchmarks (bench/accuracy_cnn.py), not of the library: BatchNorm
re-estimation after pruning and a dense teacher whose logits are computed once per dataset."""

from __future__ import annotations

import torch
from torch import nn

from compress.accuracy.train import _logits, frozen_teacher


@torch.no_grad()
def recalibrate_bn(model: nn.Module, train, batches: int = 20, batch_size: int = 128, seed: int = 0) -> int:
    """Re-estimate BatchNorm running statistics on `batches` training batches (forward passes in train
    mode, no gradient step; cumulative average instead of momentum). Pruning changes what reaches each
    BatchNorm (a residual sum loses the removed channels' contributions), so the dense statistics no
    longer fit; this cheap pass restores most of the accuracy lost before any fine-tuning. Returns the
    number of BatchNorm layers reset (0: the model has none, nothing is run)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                               # cumulative moving average over the batches
    model.train()
    try:
        for i, (x, _) in enumerate(train.batches(batch_size, shuffle=True, seed=seed + 7)):
            if i >= batches:
                break
            model(x)
    finally:
        for m, (mom, _t) in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


class CachedTeacher(nn.Module):
    """The dense teacher's logits computed once for every sample of a dataset and looked up by the
    sample's bytes, so that several fine-tuning runs on the same data (a benchmark comparing pruners,
    a gradual schedule's steps) share one teacher pass. Identical inputs give identical logits, so the
    loss is the same as with the live teacher (in eval mode); an input not in the dataset (augmented)
    falls back to running the teacher."""

    def __init__(self, teacher: nn.Module, ds, batch_size: int = 512) -> None:
        super().__init__()
        self.teacher = frozen_teacher(teacher)
        with torch.no_grad():
            self.logits = torch.cat([_logits(self.teacher(x)).float() for x, _ in ds.batches(batch_size)])
        flat = ds.images.reshape(len(ds), -1).contiguous()
        self.index = {flat[i].numpy().tobytes(): i for i in range(len(ds))}

    @torch.no_grad()
    def forward(self, x):
        flat = x.reshape(x.shape[0], -1).contiguous()
        idx = [self.index.get(flat[i].numpy().tobytes()) for i in range(x.shape[0])]
        if any(i is None for i in idx):
            return self.teacher(x)
        return self.logits[torch.as_tensor(idx)]


def fmnist_setup(model: str, batch: int, ft_samples: int, calib: str):
    """What the int8 benchmarks on a compress: Fashion-MNIST model share: the dense model, its example inputs (batch
    1 and `batch`), the test split, a stratified `ft_samples` fine-tuning subset of the training split (0: all of it)
    and the int8 export's calibration (`calib`, as `compress export --calib`)."""
    from types import SimpleNamespace

    from compress import models
    from compress.accuracy import data
    from compress.export import quantize as q

    lm = models.load(f"compress:{model}")
    dense = lm.model.eval()
    x1 = models.example_inputs(lm)
    shape = tuple(x1[0].shape[1:])
    dataset = q.dataset_of(dense, f"compress:{model}")
    train = data.load("fashion-mnist", "train", shape)
    if ft_samples:
        train = data.calibration_subset(train, ft_samples, seed=0)
    return SimpleNamespace(lm=lm, dense=dense, x1=x1, shape=shape, xb=models.example_inputs(lm, (batch,) + shape),
                           dataset=dataset, test=data.load("fashion-mnist", "test", shape), train=train,
                           cal=q.calibration(calib, lm, x1, dataset, None))
