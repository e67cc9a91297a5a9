"""Throughput benchmarks, one module per ``resnet-repro bench`` subcommand, plus what they share.

* loader.py: ``bench loader``: the training input pipeline's img/s against the one-core JPEG decode limit;
* train.py: ``bench train``: training img/s, the model alone and fed from record shards;
* gpu_decode.py: ``bench gpu-decode``: ``data.decode: gpu``'s decode-ahead work step by step, without a trainer;
* prepare.py: ``bench prepare``: copy-mode ``prepare folder`` img/s against the same decode limit;
* measure.py: the one decode-limit measure and the spread over timed rounds every bench reports, and bench
  train's step timer on the device's clock;
* machine.py: the machine every bench prints first and stores with its figures.

Argument parsing lives in commands/bench.py. The prepared launchers that drive these commands from outside the
package (``tools/gpu.sh`` for a lent GPU, ``tools/stop_latency.py``) and the recorded results (``tools/results/``)
live in the repository's root ``tools/`` folder.

Nothing is imported here: building the CLI parser must stay cheap, and each command imports its module.
"""
