"""The core plan and worker-count rule (loading/cores.py) on made-up core sets; `data.workers` as a count or "auto";
and the plan applied: loader workers and the training thread end up on the cores the plan gives them."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from resnet_repro.config import ConfigError
from resnet_repro.recipe import config_from_dict, load_config
from resnet_repro.data.loading.cores import CorePlan, parse_workers, pin_trainer, plan_cores, unpin_trainer
from resnet_repro.data.loading.loader import Job, make_loader


def test_auto_on_a_gpu_machine_keeps_two_cores_for_the_trainer():
    plan = plan_cores(range(16), "auto", "cuda")
    assert plan.workers == 14 and plan.trainer_cpus == (0, 1) and plan.worker_cpus == tuple(range(2, 16))
    text = plan.describe()
    assert "14 loader worker(s)" in text and "16 usable core(s) - 2 for the trainer" in text
    assert "workers on cores 2-15" in text and "threads on cores 0-1" in text


def test_an_explicit_count_is_kept_and_the_trainer_cores_stay_free():
    for n in (1, 8, 14, 30):  # 30: more workers than worker cores share them; the trainer's two stay free
        plan = plan_cores(range(16), n, "cuda")
        assert plan.workers == n and plan.worker_cpus == tuple(range(2, 16)) and plan.trainer_cpus == (0, 1)
        assert "as set" in plan.rule


def test_the_cores_a_container_allows_not_the_machines():
    plan = plan_cores({9, 3, 6, 5}, "auto", "cuda")  # e.g. a cgroup cpuset: not contiguous, not from 0
    assert plan.usable == (3, 5, 6, 9) and plan.trainer_cpus == (3, 5) and plan.worker_cpus == (6, 9)
    assert plan.workers == 2 and "cores 6,9" in plan.describe() and "cores 3,5" in plan.describe()


@pytest.mark.parametrize("cores, workers, trainer, worker_cpus", [
    (1, 1, (), ()),           # one core: nothing to keep apart
    (2, 1, (0,), (1,)),       # the trainer keeps one, the worker gets the other
    (3, 1, (0, 1), (2,)),
    (4, 2, (0, 1), (2, 3)),
])
def test_few_cores_still_give_at_least_one_worker(cores, workers, trainer, worker_cpus):
    plan = plan_cores(range(cores), "auto", "cuda")
    assert (plan.workers, plan.trainer_cpus, plan.worker_cpus) == (workers, trainer, worker_cpus)
    assert plan.pinned == bool(worker_cpus)


def test_a_cpu_trainer_pins_nothing_and_auto_gives_a_quarter():
    assert [plan_cores(range(n), "auto", "cpu").workers for n in (1, 2, 4, 16, 64)] == [1, 1, 1, 4, 16]
    plan = plan_cores(range(16), 6, "cpu")
    assert plan.workers == 6 and not plan.pinned and plan.trainer_cpus == () and "not pinned" in plan.describe()


def test_no_workers_means_no_pinning():
    plan = plan_cores(range(16), 0, "cuda")
    assert plan.workers == 0 and not plan.pinned and plan.trainer_cpus == ()


def test_local_ranks_get_disjoint_slices_that_cover_the_cores():
    for cores, ranks in ((16, 4), (10, 3), (96, 8), (5, 5)):
        plans = [plan_cores(range(cores), "auto", "cuda", r, ranks) for r in range(ranks)]
        usable = [set(p.usable) for p in plans]
        assert set().union(*usable) == set(range(cores))
        assert sum(len(u) for u in usable) == cores  # disjoint
        assert max(map(len, usable)) - min(map(len, usable)) <= 1
        for p in plans:
            assert set(p.trainer_cpus) | set(p.worker_cpus) == set(p.usable) or not p.pinned
    rank1 = plan_cores(range(16), "auto", "cuda", 1, 4)
    assert rank1.usable == (4, 5, 6, 7) and rank1.trainer_cpus == (4, 5) and rank1.workers == 2


def test_fewer_cores_than_local_ranks_share_them_unpinned():
    plan = plan_cores(range(2), "auto", "cuda", 3, 4)
    assert plan.usable == (0, 1) and not plan.pinned and plan.workers == 2 and "shared by 4" in plan.rule


def test_bad_settings_name_what_is_wrong():
    for bad in ("many", -1, True, 2.5, None):
        with pytest.raises(ValueError, match="workers"):
            plan_cores(range(4), bad, "cuda")
    with pytest.raises(ValueError, match="local rank 4"):
        plan_cores(range(8), "auto", "cuda", 4, 4)
    with pytest.raises(ValueError, match="no CPU cores"):
        plan_cores([], "auto", "cuda")
    assert parse_workers("AUTO") == "auto" and parse_workers("3") == 3 and parse_workers(4.0) == 4


# --- data.workers in the config -------------------------------------------------------------------------------

def test_config_takes_a_count_or_auto_and_keeps_old_recipes():
    assert load_config(None, ["data.workers=auto"]).data.workers == "auto"
    assert load_config(None, ["data.workers=6"]).data.workers == 6
    assert load_config().data.workers == 4  # the default stays a count
    cfg = load_config(None, ["data.workers=auto"])
    assert config_from_dict(cfg.to_dict()).data.workers == "auto"  # a saved config (checkpoints) reads back
    for bad in ("data.workers=-1", "data.workers=lots", "data.workers=1.5"):
        with pytest.raises(ConfigError, match="data.workers"):
            load_config(None, [bad])


# --- The plan applied -------------------------------------------------------------------------------------------

class AffinityDataset(torch.utils.data.Dataset):
    """Each 'batch' is the set of cores the worker that built it may run on."""

    def __len__(self):
        return 0

    def __getitem__(self, job):
        return torch.tensor(sorted(os.sched_getaffinity(0)))


needs_two_cores = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                     reason="needs Linux and at least two usable cores")


@needs_two_cores
def test_loader_workers_run_on_the_plans_worker_cores():
    cpus = sorted(os.sched_getaffinity(0))
    plan = plan_cores(cpus, 2, "cuda")  # planned as for a GPU trainer, so that it pins on this CPU machine
    assert plan.pinned
    jobs = [Job(0, s, np.arange(1)) for s in range(4)]
    seen = {tuple(t.tolist()) for t in make_loader(AffinityDataset(), jobs, 2, pin_memory=False, plan=plan)}
    assert seen == {plan.worker_cpus}
    unpinned = {tuple(t.tolist()) for t in make_loader(AffinityDataset(), jobs, 2, pin_memory=False)}
    assert unpinned == {tuple(cpus)}  # without a plan, workers keep the parent's cores (the old behaviour)


@needs_two_cores
def test_the_training_thread_and_threads_it_starts_run_on_the_trainer_cores():
    cpus = set(os.sched_getaffinity(0))
    plan = plan_cores(cpus, "auto", "cuda")
    seen = {}

    def trainer():  # its own thread, so that the test process's main thread keeps its cores
        before = pin_trainer(plan)
        seen["trainer"] = os.sched_getaffinity(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))  # e.g. pin-memory
        child.start()
        child.join()
        unpin_trainer(before)
        seen["after"] = os.sched_getaffinity(0)

    t = threading.Thread(target=trainer)
    t.start()
    t.join()
    assert seen["trainer"] == seen["child"] == set(plan.trainer_cpus)
    assert seen["after"] == cpus and os.sched_getaffinity(0) == cpus
    assert pin_trainer(CorePlan(1, (0,), (), (), "x")) is None  # an unpinned plan changes nothing
