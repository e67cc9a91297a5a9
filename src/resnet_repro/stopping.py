"""Stopping a run cleanly: stop requests by signal, and the ranks' meeting at which they agree on when.

A preempted or interrupted run checkpoints at the next step and exits 0, so the same command with
``--resume auto`` continues it (training/loop.py acts on the decisions; checkpoint.py writes the file). With
several ranks, every decision (stop, checkpoint now, and the loss to log) is taken at a meeting they all reach at
the same step.
"""
from __future__ import annotations

import signal
import time

import torch

from . import dist
from .errors import UserError


class StopRequest:
    """SIGTERM / SIGUSR1 (cluster preemption) and SIGINT (Ctrl-C) ask the loop to checkpoint and exit cleanly
    (exit status 0); a second Ctrl-C interrupts at once, for a user who would rather not wait for the save.

    One process reads the flag after every step; several ranks agree on it at their meetings (`RankMeeting`):
    a signal can reach ranks at different steps, and a rank that checkpoints while another trains on would
    deadlock DDP."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        """Give the signals back to whoever had them (a caller of train() in a notebook or a test runner)."""
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __bool__(self):
        return self.signum is not None


class RankMeeting:
    """The ranks' meeting point: one small all-reduce that carries the loss to log (at log steps), any rank's stop
    request and rank 0's checkpoint clock, so every rank makes the same decision at the same step.

    Meetings fall every `period` steps, and rank 0 re-chooses the period at each one so that they are about
    `SECONDS` apart whatever a step costs: a stop then acts within a few seconds on every rank (clusters often
    grant 30 s between SIGTERM and SIGKILL), while a fast GPU step does not wait on the host every step. The
    period travels in the all-reduce, so all ranks always agree on where the next meeting is. One process needs
    no meeting: it reads its own flag after every step, and reads the loss only at log steps."""

    SECONDS = 2.0

    def __init__(self, world: int, device: torch.device, log_interval: int):
        self.world, self.device, self.log_interval = world, device, log_interval
        self.period, self.t_last, self.step_last = 1, time.time(), 0

    def __call__(self, step: int, loss: torch.Tensor, stop: bool, due: bool, log_now: bool, is_main: bool):
        """(loss averaged over ranks or None, stop, checkpoint) after `step`; None when no meeting is due."""
        if self.world == 1:
            return (loss.item() if log_now else None), stop, due
        if not log_now and step % self.period:
            return None
        proposal = 0.0
        if is_main:
            now = time.time()
            per_step = (now - self.t_last) / max(step - self.step_last, 1)
            proposal = float(min(max(int(self.SECONDS / max(per_step, 1e-6)), 1), self.log_interval))
            self.t_last, self.step_last = now, step
        votes = torch.tensor([float(stop), float(due), proposal], device=self.device)
        meet = dist.all_reduce_sum(torch.cat([loss.float().view(1) if log_now else votes.new_zeros(1), votes]))
        loss_sum, stop_votes, due_votes, period = meet.tolist()
        self.period = int(period)
        return (loss_sum / self.world if log_now else None), stop_votes > 0, due_votes > 0



class RankError(UserError):
    """A rank could not go on (a damaged sample in an evaluation): raised on every rank, naming that rank."""


def on_every_rank(batches, device: torch.device):
    """`batches`, with the ranks meeting after each fetch (one all-reduce of two numbers): a rank whose fetch fails
    (DecodeError, RecordError, ...) stops every rank at the same meeting with one RankError naming it, instead of
    leaving the others waiting in their next collective until the process group's timeout (30 min for gloo).
    Ranks may hold different numbers of batches (evaluation splits samples, not batches): the meetings go on
    until no rank has one left. One process: `batches` as they are."""
    if not dist.is_available_and_initialized():
        yield from batches
        return
    it = iter(batches)
    while True:
        failed = batch = None
        try:
            batch = next(it)
        except StopIteration:
            pass
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, whatever it is
            failed = e
        meet = dist.all_reduce_sum(torch.tensor([float(failed is not None), float(batch is not None)],
                                                dtype=torch.float64, device=device))
        n_failed, n_batches = meet.tolist()
        if n_failed:
            said = dist.all_gather_object(None if failed is None else f"{failed}".strip().splitlines()[0])
            rank = next(r for r, msg in enumerate(said) if msg is not None)
            raise RankError(f"rank {rank} of {len(said)}: {said[rank]}") from failed
        if not n_batches:
            return
        if batch is not None:
            yield batch
