"""``resnet-repro`` with a fault injected at an exact step, for tests/test_faults.py and tests/test_distributed.py.

    python tests/faults.py train --config ... --out ...               (one process)
    torchrun --nproc-per-node 2 tests/faults.py train --config ...    (each rank)

It runs the real command line (resnet_repro.cli.main); the faults come from outside the package, by wrapping
torch's SGD so that something happens right after this process's k-th optimizer step. Environment:

    FAULT         kill9 (SIGKILL itself: `kill -9`), sigterm (SIGTERM itself: preemption), sigint (Ctrl-C), exit (os._exit(17):
                  a crashed rank), nan (fill one weight with NaN: a diverged run)
    FAULT_STEP    k, counted from 1 in this process (resuming starts counting again)
    FAULT_RANK    only on this rank (default: every rank)
    FAULT_ATTEMPT only on this torchrun attempt, TORCHELASTIC_RESTART_COUNT (default 0: the first one)
    FREEZE_BN=1   hold every BN layer in eval mode on its initial statistics (mean 0, variance 1), so a
                  sample's loss depends on the weights and that sample alone (see test_distributed.py)
"""
from __future__ import annotations

import os
import signal
import sys
import types

import torch
import torch.nn as nn


def _fault_here() -> str | None:
    fault = os.environ.get("FAULT")
    if not fault:
        return None
    if "FAULT_RANK" in os.environ and os.environ["FAULT_RANK"] != os.environ.get("RANK", "0"):
        return None
    if os.environ.get("FAULT_ATTEMPT", "0") != os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"):
        return None
    return fault


class FaultySGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        out = super().step(closure)
        FaultySGD.steps += 1
        fault = _fault_here()
        if fault and FaultySGD.steps == int(os.environ["FAULT_STEP"]):
            print(f"faults.py: {fault} after optimizer step {FaultySGD.steps}", file=sys.stderr, flush=True)
            if fault == "kill9":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif fault == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            elif fault == "exit":
                os._exit(17)
            elif fault == "nan":
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            else:
                raise ValueError(f"FAULT={fault!r}: expected kill9, sigterm, sigint, exit or nan")
        return out


def _frozen_bn(build):
    def build_model(*args, **kwargs):
        model = build(*args, **kwargs)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
                m.train = types.MethodType(lambda self, mode=True: self, m)  # model.train() leaves it in eval
        return model
    return build_model


def main() -> int:
    from resnet_repro.cli import main as cli_main
    from resnet_repro.training import setup

    torch.optim.SGD = FaultySGD  # setup.make_optimizer looks the class up at call time
    if os.environ.get("FREEZE_BN") == "1":
        setup.build_model = _frozen_bn(setup.build_model)
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
