"""resnet-repro: ResNet v1 on ImageNet, reproduced from scratch in PyTorch."""
__version__ = "0.1.0"
