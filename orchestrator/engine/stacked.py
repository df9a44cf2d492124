"""Horizontal fusion: members of a group with one student architecture and one objective
structure run as ONE stacked model (``torch.func.stack_module_state`` + ``vmap`` over their
parameters and BatchNorm buffers), so K students cost about one student's kernel launches.

On a GPU these small CIFAR students are launch-bound (a step is hundreds of small kernels);
stacking turns each kernel into one over K members. Members may differ in the objective's
loss weights (``Objective.weight_fields``), lr, momentum, weight decay and schedule: the
optimiser is SGD over the stacked tensors with a per-member lr / momentum / weight decay
(a few foreach kernels for the whole stack). Stacked kernels round differently from K
separate ones, so a stacked member's loss terms match the member alone within float
tolerance, not bit for bit; the group level stays bit-identical.

The members' own modules stay the source of truth between epochs: :meth:`Stack.unstack`
copies the stacked state back (before checkpoints and evaluation), so a checkpoint is the
same file whichever level wrote it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from losses import StepInputs, get_objective
from models.teacher import TeacherOutputs
from orchestrator.data.batches import Batch
from orchestrator.engine.member import Member
from orchestrator.engine.precision import autocast


def stack_key(member: Member) -> tuple[Any, ...] | None:
    """Members with equal keys can be stacked; None: this member runs alone."""
    trial = member.trial
    if trial.train.devices > 1:  # the vmapped step has no per-device split: group level
        return None
    cls = get_objective(trial.loss.name)
    if cls.weight_fields is None:
        return None
    weights = cls.term_weights(trial.loss.params, 0)
    if weights is None:
        return None
    structure = tuple((k, repr(v)) for k, v in sorted(trial.loss.params.to_dict().items())
                      if k not in cls.weight_fields)
    active = tuple(sorted(k for k, w in weights.items() if w != 0))
    return (trial.student.arch, trial.loss.name, structure, tuple(sorted(weights)), active)


def plan_stacks(members: Sequence[Member]) -> tuple[list[Stack], list[Member]]:
    """Stacks of two or more members, and the members left to run alone."""
    by_key: dict[tuple[Any, ...], list[Member]] = {}
    alone: list[Member] = []
    for m in members:
        key = stack_key(m)
        if key is None:
            alone.append(m)
        else:
            by_key.setdefault(key, []).append(m)
    stacks = []
    for group in by_key.values():
        if len(group) > 1:
            stacks.append(Stack(group))
        else:
            alone.extend(group)
    return stacks, alone


class _Pair(nn.Module):
    """One member's student and objective as a module whose forward is the loss terms."""

    def __init__(self, member: Member) -> None:
        super().__init__()
        self.student = member.student
        self.objective = member.objective

    def forward(self, views: list[Tensor], labels: Tensor | None, indices: Tensor,
                teacher: TeacherOutputs, epoch: int, step: int) -> Tensor:
        inputs = StepInputs(views=views, indices=indices, labels=labels, student=self.student,
                            teacher=teacher, epoch=epoch, step=step)
        terms = self.objective.compute(inputs)
        return torch.stack([v.float() for v in terms.terms.values()])


class Stack:
    """K members trained as one vmapped model."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        pairs = [_Pair(m) for m in self.members]
        self.template = copy.deepcopy(pairs[0]).to("meta")
        params, buffers = stack_module_state(pairs)
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        self.names = list(params)
        first = self.members[0].trial
        cls = get_objective(first.loss.name)
        weights = cls.term_weights(first.loss.params, 0) or {}
        self.terms = list(weights)
        self.device = self.members[0].device
        self._momentum: list[Tensor] | None = None
        self._restore_momentum()

    @property
    def k(self) -> int:
        return len(self.members)

    def _per_member(self, values: Sequence[float], like: Tensor) -> Tensor:
        """(K, 1, 1, ...) so that it broadcasts over a stacked tensor."""
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(
            -1, *([1] * (like.dim() - 1)))

    def begin_epoch(self, epoch: int) -> None:
        lrs = [m.begin_epoch(epoch) for m in self.members]
        self.template.train()  # BatchNorm in the vmapped forward uses batch statistics
        tensors = [self.params[n] for n in self.names]
        self._lr = [self._per_member(lrs, t) for t in tensors]
        self._wd = [self._per_member([m.trial.train.weight_decay for m in self.members], t)
                    for t in tensors]
        self._mom = [self._per_member([m.trial.train.momentum for m in self.members], t)
                     for t in tensors]
        for p in self.params.values():
            p.requires_grad_(True)
        # Each member's term weights for this epoch (an epoch-dependent warm-up is allowed).
        self._weights = torch.tensor(
            [[(get_objective(m.trial.loss.name).term_weights(m.trial.loss.params, epoch)
               or {})[t] for t in self.terms] for m in self.members],
            dtype=torch.float32, device=self.device)

    def step(self, batch: Batch, teacher: TeacherOutputs) -> Tensor:
        """One step of every member; returns the (K, 1 + terms) ``[total, terms...]``."""
        first = self.members[0].trial
        views = batch.views(first.requirements.num_views)
        template = self.template

        def terms_of(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
            out: Tensor = functional_call(template, (params, buffers),
                                          (views, batch.labels, batch.indices, teacher,
                                           batch.epoch, batch.step))
            return out

        with autocast(self.device, first.train.precision):
            terms = vmap(terms_of, in_dims=(0, 0), randomness="error")(self.params,
                                                                      self.buffers)
        totals = (terms * self._weights).sum(dim=1)
        for p in self.params.values():
            p.grad = None
        totals.sum().backward()
        self._sgd()
        values = torch.cat([totals.detach().unsqueeze(1), terms.detach()], dim=1)
        names = ["loss/total", *(f"loss/{t}" for t in self.terms)]
        for i, m in enumerate(self.members):
            m.add_terms(values[i], names)
        return values

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD (no dampening, no Nesterov) with per-member hyper-parameters:
        d = g + wd p; buf = d on the first step, else momentum buf + d; p -= lr buf."""
        params = [self.params[n] for n in self.names]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        d = torch._foreach_add(grads, torch._foreach_mul(params, self._wd))
        if self._momentum is None:
            self._momentum = [x.clone() for x in d]
        else:
            torch._foreach_mul_(self._momentum, self._mom)
            torch._foreach_add_(self._momentum, d)
        torch._foreach_sub_(params, torch._foreach_mul(self._momentum, self._lr))

    # ------------------------------------------------------------------ members' own state

    def _member_params(self, member: Member) -> list[Tensor]:
        pair = dict(_Pair(member).named_parameters())
        return [pair[n] for n in self.names]

    def _restore_momentum(self) -> None:
        """A resumed member's momentum buffers come from its own optimiser state."""
        bufs: list[list[Tensor]] = []
        for m in self.members:
            state = m.optimizer.state
            own = [state.get(p, {}).get("momentum_buffer") for p in self._member_params(m)]
            if any(b is None for b in own):
                return
            bufs.append([b for b in own if b is not None])
        self._momentum = [torch.stack([b[i] for b in bufs]) for i in range(len(self.names))]

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy the stacked parameters, buffers and momentum back into each member's own
        modules and optimiser (checkpoints and evaluation read those)."""
        for i, m in enumerate(self.members):
            pair = _Pair(m)
            own_params = dict(pair.named_parameters())
            own_buffers = dict(pair.named_buffers())
            for name, value in self.params.items():
                own_params[name].copy_(value[i])
            for name, value in self.buffers.items():
                own_buffers[name].copy_(value[i])
            if self._momentum is not None:
                for p, buf in zip(self._member_params(m), self._momentum, strict=True):
                    m.optimizer.state[p]["momentum_buffer"] = buf[i].clone()
