"""Augmentation, split where it is cheapest.

Takes: on a CPU worker, a sample's encoded bytes (or decoded pixels) and its generator
``sample_rng(seed, epoch, index)``; on the training device, the uint8 batch and the colour parameters the
workers drew.
Gives: on the worker, a uint8 HWC image of the train or val size and the sample's colour parameters; on the
device, the normalized float NCHW batch (channels_last).

CPU worker side (per sample, numpy/OpenCV, one thread per process): geometry (crop, resize, flip, erase) and
the draw of every per-sample random parameter, colour ones included, so what a sample becomes is a pure
function of (seed, epoch, index), whichever worker or rank handles it. Device side (per batch, torch): colour
distortion and normalization, where a GPU does them almost for free.

    rng.py        sample_rng: the per-sample generator (Philox keyed by seed, epoch, index) and its streams
    boxes.py      train crop boxes: inception, tf_cnn, paper (the scale augmentation)
    geometry.py   TrainGeometry (crop, resize, flip, erase) and EvalGeometry (resize, centre crop)
    color.py      ColorAugment: colour distortion and PCA lighting, drawn per sample, applied per batch
    device.py     DeviceTransform: the uint8 batch on the device -> colour, normalization, channels_last
"""
