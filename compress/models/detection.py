"""A torchvision detection model up to its post-processing: `torchvision:NAME.heads`.

torch.export cannot trace a whole detection model: anchor decoding, score thresholds and non-maximum
suppression give tensors of data-dependent shape. Everything before them is a plain convolutional network:
`DetectionHeads` runs the backbone + FPN and the dense prediction head on the feature maps and returns the
raw head outputs (RetinaNet, FCOS, SSD, SSDlite: the head's dict, e.g. cls_logits and bbox_regression; the
two-stage R-CNNs: the region proposal network's objectness and box deltas per level; their ROI heads run on
proposals and stay out). Pruning it prunes the backbone, the FPN and the head together; the pruned
parameters keep their names (`backbone.*`, `head.*` / `rpn_head.*`), so they load back into the detector.
"""

from __future__ import annotations

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
            return {"objectness": objectness, "bbox_deltas": deltas}
        return self.head(features)
