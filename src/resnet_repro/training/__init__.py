"""Training: a recipe (config.Config) and a run folder in; checkpoints, metrics.jsonl, results.json and the final
weights out. `loop.train` is the entry point and reads as the run's script, top to bottom.

* ``loop``    ``train`` and the epochs: the steps, the epoch's checkpoint, its evaluation and log line.
* ``setup``   the processes and their hardware-made choices, the data, the model and optimizer.
* ``resume``  the run folder claimed, a checkpoint put back on a resume, and the checkpoints saved.
* ``finish``  after the last step: precise BN, the final evaluation, the test split scored once, results.
* ``state``   what the phases share (``Run``, ``RunState``, ``Data``, ``Learner``) and an epoch's running numbers.
"""
