"""Raw data sets as published -> what the shard writer takes.

Takes: the files a data set ships (Fashion-MNIST's IDX files, CIFAR's pickle archive, ImageNet's folders or
official tars, any class-per-folder tree), found on disk or downloaded and checked by SHA-256.
Gives: for image folders and archives a `Source` (classes, and per split `Item(key, path, label)`) that
shards/prepare.py converts; Fashion-MNIST and CIFAR, small and already pixels, are written to shards here
(one records.Sample per image, inside shards/staging.py's all-or-nothing folder).

    download.py           SourceError, the download cache, gzip'd reads, downloads checked by SHA-256
    fashion_mnist.py      Fashion-MNIST: find or download the IDX files; prepare train, val (held out), test
    cifar.py              CIFAR-10 / CIFAR-100 from the python-pickle archive; prepare train, val, test
    folder.py             Source, Item, Member; class-per-folder discovery (`prepare folder`)
    imagenet.py           ImageNet folders: the train and val layouts and their label files
    imagenet_archives.py  ImageNet from the official tars, every image a byte range read in place
    holdout.py            the held-out val split, the same for every importer (stratified, seeded, recorded)
    synthetic.py          photo-like JPEG data sets made on the spot, for tests and benchmarks
"""
