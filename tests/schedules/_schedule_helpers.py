"""Shared helpers of the schedule tests."""

import torch


def make_optimizer(lrs=(0.1, 0.02), momentum=0.9):
    """SGD with one parameter group per LR (discriminative LRs)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=momentum)


def drive(sched, optimizer, *, epochs, steps_per_epoch, metrics=None, start=(0, 0), stop=None):
    """Drive a StropScheduler as the trainer does; returns the LRs (all groups) of each step.

    ``start=(epoch, step)`` resumes inside a run; ``stop=(epoch, step)`` ends before that step.
    """
    lrs = []
    for epoch in range(start[0], epochs):
        first = start[1] if epoch == start[0] else 0
        for step in range(first, steps_per_epoch):
            if stop is not None and (epoch, step) == stop:
                return lrs
            lrs.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            sched.on_optimizer_step()
        sched.on_epoch_end(None if metrics is None else metrics[epoch])
    return lrs
