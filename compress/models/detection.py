"""A torchvision detection model up to its post-processing: `torchvision:NAME.heads`.

torch.export cannot trace a whole detection model: anchor decoding, score thresholds and non-maximum
suppression give tensors of data-dependent shape. Everything before them is a plain convolutional network:
`DetectionHeads` runs the backbone + FPN and the dense prediction head on the feature maps and returns the
raw head outputs (RetinaNet, FCOS, SSD, SSDlite: the head's dict, e.g. cls_logits and bbox_regression; the
two-stage R-CNNs: the region proposal network's objectness and box deltas per level; their ROI heads run on
proposals and stay out). Pruning it prunes the backbone, the FPN and the head together; the pruned
parameters keep their names (`backbone.*`, `head.*` / `rpn_head.*`), so they load back into the detector.

It returns them as one tensor, (batch, anchors over all levels, values per anchor), so that the exported ONNX
(one output) and its parity check hold every one of them, not only the first: a one-stage head's outputs
concatenated on the last dimension in the order of the head's dict (RetinaNet cls_logits then bbox_regression,
FCOS + bbox_ctrness, SSD bbox_regression then cls_logits), each already (batch, anchors, n); the region proposal
network's objectness (1) and box deltas (4) per anchor, levels in order, anchors ordered as torchvision's
`concat_box_prediction_layers` orders them (position, then anchor).
"""

from __future__ import annotations

import torch
from torch import nn


class DetectionHeads(nn.Module):
    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        if hasattr(detector, "rpn"):
            self.rpn_head = detector.rpn.head
        elif hasattr(detector, "head"):
            self.head = detector.head
        else:
            raise TypeError(f"{type(detector).__name__} has neither a head nor a region proposal network")

    def forward(self, x):
        features = list(self.backbone(x).values())
        if hasattr(self, "rpn_head"):
            objectness, deltas = self.rpn_head(features)
            levels = []
            for o, d in zip(objectness, deltas):      # o: (N, A, H, W); d: (N, A * 4, H, W)
                o = o.permute(0, 2, 3, 1).flatten(1).unsqueeze(-1)                                  # (N, H*W*A, 1)
                d = d.unflatten(1, (o.shape[1] // (d.shape[2] * d.shape[3]), 4)).permute(0, 3, 4, 1, 2).flatten(1, 3)
                levels.append(torch.cat([o, d], dim=-1))                                            # (N, H*W*A, 5)
            return torch.cat(levels, dim=1)
        return torch.cat(list(self.head(features).values()), dim=-1)
