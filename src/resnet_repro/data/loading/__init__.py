"""Batches from shards, in a deterministic order, onto the training device.

Takes: a shard reader (shards/reader.py), a geometry (augment/geometry.py), the seed, epoch and world size.
Gives: per step a uint8 NHWC batch (with its labels, the count of replaced bad samples and the colour
parameters), built by worker processes and copied to the device ahead of use; with ``data.decode: gpu`` the
same batches, decoded on the GPU.

    loader.py       the epoch's order and each rank's share, worker batches, bad-sample replacement, prefetch
    gpu_decode.py   ``data.decode: gpu``: workers read bytes and draw crops, the GPU decodes a batch ahead
    cores.py        which cores the trainer and the workers use; what ``data.workers: auto`` means
    memory.py       glibc malloc tuning for the processes that decode and transform batches
"""
