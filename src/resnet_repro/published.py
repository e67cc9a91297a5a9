"""Published figures a run is set next to in report.md: the ResNet paper, the reference recipe, fb.resnet.torch,
torchvision, NVIDIA, FFCV, timm, and the Fashion-MNIST benchmark, each with its epochs, test protocol and source,
as the sources state them (docs/REFERENCE.md collects them). Plain data: nothing here reads a run.
"""
from __future__ import annotations

# (data set, model, who / what, epochs, test protocol, top-1 err %, top-5 err % or None, source). Figures as
# their sources state them; collected in docs/REFERENCE.md. "v1.5" marks the stride-in-3x3 bottleneck.
_IN_CROP = "centre crop 224 of shorter side 256"
_PAPER_ITERS = "~120 (60e4 it.)"  # 600k iterations x 256 images / 1.28M training images
PUBLISHED = [
    ("imagenet", "resnet50", "He et al. 2015, released Caffe model", _PAPER_ITERS, _IN_CROP, 24.7, 7.8,
     "KaimingHe/deep-residual-networks README"),
    ("imagenet", "resnet50", "He et al. 2015, released Caffe model", _PAPER_ITERS, "10-crop", 22.9, None,
     "KaimingHe/deep-residual-networks README"),
    ("imagenet", "resnet101", "He et al. 2015, released Caffe model", _PAPER_ITERS, _IN_CROP, 23.6, 7.1,
     "KaimingHe/deep-residual-networks README"),
    ("imagenet", "resnet101", "He et al. 2015, released Caffe model", _PAPER_ITERS, "10-crop", 21.8, None,
     "KaimingHe/deep-residual-networks README"),
    ("imagenet", "resnet152", "He et al. 2015, released Caffe model", _PAPER_ITERS, _IN_CROP, 23.0, 6.7,
     "KaimingHe/deep-residual-networks README"),
    ("imagenet", "resnet152", "He et al. 2015, released Caffe model", _PAPER_ITERS, "10-crop", 21.4, None,
     "KaimingHe/deep-residual-networks README"),
    ("imagenet", "resnet50", "reference recipe (TF 1.12, 4x Titan XP, ~4 days)", "120", _IN_CROP, 24.36, 7.46,
     "seed README"),
    ("imagenet", "resnet50", "tornadomeet/ResNet (MXNet, v2 pre-activation)", "120", _IN_CROP, 24.39, 7.24,
     "tornadomeet/ResNet README"),
    *[("imagenet", f"resnet{d}", "fb.resnet.torch", "90", _IN_CROP, e1, e5, "facebook/fb.resnet.torch README")
      for d, e1, e5 in ((18, 30.43, 10.76), (34, 26.73, 8.74), (50, 24.01, 7.02), (101, 22.44, 6.21),
                        (152, 22.16, 6.16))],
    ("imagenet", "resnet50", "torchvision IMAGENET1K_V1 (v1.5, step 30)", "90", _IN_CROP, 23.87, 7.14,
     "pytorch.org docs (acc 76.13 / 92.862)"),
    ("imagenet", "resnet50", "torchvision IMAGENET1K_V2 (v1.5, TA, mixup, cutmix, EMA, LS)", "600",
     "centre crop 224 of 232", 19.14, 4.57, "pytorch/vision PR #5201"),
    ("imagenet", "resnet50", "NVIDIA DeepLearningExamples (v1.5, AMP)", "90", _IN_CROP, 22.88, None,
     "DeepLearningExamples README"),
    ("imagenet", "resnet50", "NVIDIA DeepLearningExamples (v1.5, AMP)", "250", _IN_CROP, 21.57, None,
     "DeepLearningExamples README"),
    *[("imagenet", "resnet50", "FFCV, 8x A100", str(ep), "FFCV test (res 256)", e1, None,
       f"ffcv-imagenet README ({minutes} min)") for ep, e1, minutes in ((16, 26.2, 14.9), (88, 21.6, 77.2))],
    ("imagenet", "resnet18", "FFCV, 1x A100", "16", "FFCV test", 33.1, None, "ffcv-imagenet README (35.0 min)"),
    ("imagenet", "resnet18", "FFCV, 1x A100", "88", "FFCV test", 27.6, None, "ffcv-imagenet README (187.3 min)"),
    ("imagenet", "resnet50", "timm ResNet strikes back A1", "600", "centre crop 224", 19.6, None, "arXiv 2110.00476"),
    *[("cifar10", f"resnet{d}", "He et al. 2015, Table 6", "~182 (64k it.)", "single 32x32 view", e1, None,
       "arXiv 1512.03385 Table 6") for d, e1 in ((20, 8.75), (32, 7.51), (44, 7.17), (56, 6.97), (110, 6.43),
                                                  (1202, 7.93))],
    # The Fashion-MNIST README's benchmark (other models: context, not a like-for-like comparison).
    *[("fashion-mnist", "*", f"{model} ({aug})", "-", "test set, single view", e1, None,
       "zalandoresearch/fashion-mnist README benchmark")
      for model, aug, e1 in (("ResNet18", "normalization, h/v flip, translation, rotation", 5.1),
                             ("MobileNet", "horizontal flips", 5.0),
                             ("DenseNet-BC 768K params", "mean/std, random crops, h flips", 4.6),
                             ("WRN-28-10", "mean/std, random crops, h flips", 4.1),
                             ("WRN-28-10 + Random Erasing", "same + random erasing", 3.7),
                             ("WRN40-4 8.9M params", "mean/std, random crops, h flips", 3.3))],
]


def published_for(dataset: str | None, model: str | None) -> list[tuple]:
    """Published rows for the run's data set and model (every row for data sets benchmarked on other models)."""
    ds = (dataset or "").lower().replace("_", "-")
    ds = {"fashion_mnist": "fashion-mnist", "cifar-10": "cifar10"}.get(ds, ds)
    return [r for r in PUBLISHED if r[0] == ds and r[1] in ("*", model)]


def published_split(dataset: str | None) -> str:
    """The split published figures of a data set are measured on (ImageNet's test labels are not public)."""
    return "ILSVRC-2012 val" if (dataset or "").lower() == "imagenet" else "official test"
