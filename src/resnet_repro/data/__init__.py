"""Data: raw data sets -> record shards -> batches on the training device, one subpackage per stage.

    sources/   raw data sets as published -> a Source of image files (small ones: samples written to shards)
    shards/    the record shard format: prepare (all or nothing, resumable), read, verify, read from a URL
    decode/    image headers read without decoding; bytes -> pixels on the CPU (whole, a crop's region, reduced)
    augment/   per-sample geometry on the workers, colour and normalization on the device; the per-sample rng
    loading/   deterministic batches from worker processes to the device; GPU decoding; cores and memory
"""
