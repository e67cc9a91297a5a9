"""Exact top-1/top-5 error over a whole split, across any number of ranks: one module per concern.

* ``val_pass``       the pass the training loop runs (single view, or with its mirror); the top-k counts and the
                     test-time input transform every evaluation shares.
* ``protocols``      the papers' test protocols (single, flip, 10crop, multiscale), scored in one pass.
* ``trained_model``  a trained model to evaluate, predict with or export: a run's checkpoint (trained or EMA
                     weights) or a torchvision state_dict.

``resnet-repro evaluate`` itself (its arguments, and a trained model scored on one process or many) is
commands/evaluate.py.

The names below are re-exported so that callers import from ``resnet_repro.evaluate`` whatever the module.
"""
from .protocols import (PAPER_SCALES, PROTOCOLS, Protocol, ViewDataset, evaluate_protocols, five_crops,
                        format_table, group_views, make_protocol, resize_shorter, score_groups, score_images)
from .trained_model import Trained, load_trained, read_state_dict, trained_from_torchvision
from .val_pass import eval_transform, evaluate, topk_correct, topk_hits

__all__ = ["PAPER_SCALES", "PROTOCOLS", "Protocol", "Trained", "ViewDataset", "eval_transform",
           "evaluate", "evaluate_protocols", "five_crops", "format_table", "group_views",
           "load_trained", "make_protocol", "read_state_dict", "resize_shorter", "score_groups", "score_images",
           "topk_correct", "topk_hits", "trained_from_torchvision"]
