"""glibc malloc tuning for the processes that decode and transform batches (loader workers; a trainer whose
DeviceTransform runs on the CPU): freed blocks are kept for reuse instead of being faulted in afresh.
"""
from __future__ import annotations

import torch


def keep_freed_memory(large: bool = False) -> None:
    """Let glibc's malloc keep freed blocks for reuse instead of returning them to the kernel.

    Every decode allocates a fresh full-size image (~0.6 MB at 500x375) and every resize a fresh crop; above
    glibc's default 128 kB mmap threshold each one is new pages, and first-touch page faults then cost 5-40 %
    of a JPEG decode (measured: the most on VMs). With the thresholds raised, the same heap blocks are reused.
    Called in each loader worker (and by `bench loader` before timing the decode limit). No-op off glibc.

    `large`: serve blocks above glibc's 32 MB ceiling for the mmap threshold from the heap too (no mmap at
    all). Set by keep_batch_memory in the processes that run DeviceTransform on a CPU device for every batch: its float output for 64 images of
    224^2 is 38.5 MB, fresh pages on every batch otherwise; measured on the 2-core sandbox, 17.7 -> 5.2 ms per
    batch for the tf_cnn transform. CPU training itself neither gained nor lost (ResNet-20/50 compute img/s)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)  # bytes; glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 256 << 20)  # bytes of free heap kept before trimming
    if large:
        libc.mallopt(m_mmap_max, 0)  # no block is mmapped: large ones come from the heap and stay for reuse


def keep_batch_memory(device) -> None:
    """For a process that runs DeviceTransform on the CPU batch after batch (training, bench loader / train; not
    evaluate, predict or a user's script): ``keep_freed_memory(large=True)``, process-wide. Its float output (38.5
    MB at 64 x 224^2) is above glibc's mmap ceiling, so fresh pages on every batch otherwise: the tf_cnn transform
    took 17.7 ms per batch without, 5.2 ms with (2-core sandbox, see keep_freed_memory)."""
    if torch.device(device).type == "cpu":
        keep_freed_memory(large=True)
