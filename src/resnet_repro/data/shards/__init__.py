"""Record shards: the one on-disk format every data set is converted to, written once and read every epoch.

Takes: a `Source` of image files (sources/folder.py) or, from the small data sets' importers, encoded samples.
Gives: a prepared folder (tar shards in WebDataset layout, offset indexes, manifest.json with every SHA-256),
committed all or nothing; and readers that give (key, image bytes, label) by index, checked when they open.

    records.py   the format: ShardWriter and write_split, the manifest (write, load, check), the index files
    reader.py    RecordReader: random access to one split (or several read as one), checked against the manifest
    remote.py    the same read from an fsspec URL (s3://, gs://, http(s)://), optionally cached on disk
    staging.py   the all-or-nothing ``<out>.partial`` folder every prepare writes into
    prepare.py   a Source -> shards: every image checked and converted, shards in parallel, resumable
    verify.py    `resnet-repro verify`: re-check a prepared folder end to end; `--upgrade` an older manifest
"""
