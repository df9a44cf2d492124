"""Multinomial logistic regression for many regularisation strengths at once (transfer
evaluation, docs/RECIPES.md).

Problem j minimises scikit-learn's ``LogisticRegression`` objective (L2 penalty, intercept
not penalised) divided by ``C_j * n``, which has the same minimiser::

    f_j(W, b) = 1/n * sum_i CE(W x_i + b, y_i) + 1/(2 C_j n) * ||W||^2

The problems are independent, so they are solved together by one batched L-BFGS: every
problem keeps its own curvature pairs (history ``m``), search direction (two-loop
recursion) and Armijo backtracking step, and stops on its own when ``max |grad f_j| <= tol``
or its step no longer decreases ``f_j``. Each iteration evaluates the still-active problems
in one ``einsum`` on the features' device (chunked over problems to bound memory). Loss and
gradient are analytic: ``grad_W = 1/n (softmax - onehot)^T X + W/(C n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ELEMENTS = 1 << 25  # logits held at once per chunk of problems (problems x n x classes)


@dataclass(frozen=True)
class Fit:
    """Weights ``B x K x D``, biases ``B x K``, iterations and objective evaluations (line
    search included) per problem."""

    weight: Tensor
    bias: Tensor
    iterations: Tensor
    evaluations: Tensor


def _loss_grad(theta: Tensor, x: Tensor, y: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Objective and gradient of problems ``theta`` (``b x K x (D+1)``, bias last) on
    ``x`` (``n x (D+1)``, ones last) with penalties ``lam = 1/(C n)`` (``b``)."""
    n = x.shape[0]
    logp = torch.einsum("nd,bkd->bnk", x, theta).log_softmax(dim=2)
    rows = torch.arange(n, device=x.device)
    nll = -logp[:, rows, y].mean(dim=1)
    p = logp.exp_()
    p[:, rows, y] -= 1.0
    grad = torch.einsum("bnk,nd->bkd", p, x) / n
    weight = theta[..., :-1]
    grad[..., :-1] += lam[:, None, None] * weight
    return nll + 0.5 * lam * weight.pow(2).sum(dim=(1, 2)), grad


def _evaluate(theta: Tensor, x: Tensor, y: Tensor, lam: Tensor, classes: int,
              elements: int) -> tuple[Tensor, Tensor]:
    per = max(1, elements // max(1, x.shape[0] * classes))
    parts = [_loss_grad(theta[i:i + per], x, y, lam[i:i + per])
             for i in range(0, theta.shape[0], per)]
    return torch.cat([f for f, _ in parts]), torch.cat([g for _, g in parts])


def fit_logistic(features: Tensor, labels: Tensor, num_classes: int, cs: Tensor,
                 max_iter: int = 1000, tol: float = 1e-5, history: int = 10,
                 elements: int = ELEMENTS) -> Fit:
    """One multinomial logistic regression per value of ``cs`` (C = 1/wd) on the same data,
    from zero weights, by batched L-BFGS (module docstring)."""
    device, dtype = features.device, features.dtype
    n, dim = features.shape
    x = torch.cat([features, torch.ones(n, 1, device=device, dtype=dtype)], dim=1)
    y = labels.to(device=device, dtype=torch.int64)
    b, size = cs.numel(), num_classes * (dim + 1)
    lam = 1.0 / (cs.to(device=device, dtype=dtype) * n)
    theta = torch.zeros(b, size, device=device, dtype=dtype)
    s_hist = torch.zeros(history, b, size, device=device, dtype=dtype)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(history, b, device=device, dtype=dtype)
    gamma = torch.ones(b, device=device, dtype=dtype)
    count = torch.zeros(b, dtype=torch.int64, device=device)  # curvature pairs stored
    iterations = torch.zeros(b, dtype=torch.int64, device=device)
    evaluations = torch.zeros(b, dtype=torch.int64, device=device)

    def run(idx: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        evaluations[idx] += 1
        f, g = _evaluate(t.view(-1, num_classes, dim + 1), x, y, lam[idx], num_classes,
                         elements)
        return f, g.reshape(len(idx), size)

    everyone = torch.arange(b, device=device)
    f, g = run(everyone, theta)
    active = g.abs().amax(dim=1) > tol
    for _ in range(max_iter):
        idx = everyone[active]
        if idx.numel() == 0:
            break
        gi, th, fi = g[idx], theta[idx], f[idx]
        q = gi.clone()
        alphas = []
        for j in reversed(range(history)):  # newest pair last; empty pairs have rho 0
            a = rho[j, idx] * (s_hist[j, idx] * q).sum(dim=1)
            q -= a[:, None] * y_hist[j, idx]
            alphas.append(a)
        z = q * gamma[idx, None]
        for j, a in zip(range(history), reversed(alphas), strict=True):
            beta = rho[j, idx] * (y_hist[j, idx] * z).sum(dim=1)
            z += s_hist[j, idx] * (a - beta)[:, None]
        d = -z
        slope = (gi * d).sum(dim=1)
        uphill = slope >= 0  # no descent direction from the history: steepest descent
        if uphill.any():
            d[uphill] = -gi[uphill]
            slope = torch.where(uphill, -(gi * gi).sum(dim=1), slope)
        first = count[idx] == 0
        step = torch.where(first, (1.0 / gi.abs().sum(dim=1)).clamp(max=1.0),
                           torch.ones_like(fi))
        accepted = torch.zeros_like(first)
        f_new, g_new = fi.clone(), gi.clone()
        for _ in range(40):  # Armijo backtracking, each problem its own step
            todo = ~accepted
            sub = idx[todo]
            trial = th[todo] + step[todo, None] * d[todo]
            ft, gt = run(sub, trial)
            ok = ft <= fi[todo] + 1e-4 * step[todo] * slope[todo]
            where = todo.nonzero().squeeze(1)[ok]
            f_new[where], g_new[where] = ft[ok], gt[ok]
            accepted[where] = True
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        stalled = ~accepted | (fi - f_new <= 1e-12 * fi.abs().clamp(min=1.0))
        new_theta = th + step[:, None] * d
        s = new_theta - th
        yv = g_new - gi
        sy = (s * yv).sum(dim=1)
        good = accepted & (sy > 1e-10)
        # Shift the histories of these problems by one; a pair with sy <= 0 is stored empty.
        s_hist[:, idx] = torch.roll(s_hist[:, idx], -1, dims=0)
        y_hist[:, idx] = torch.roll(y_hist[:, idx], -1, dims=0)
        rho[:, idx] = torch.roll(rho[:, idx], -1, dims=0)
        s_hist[-1, idx] = torch.where(good[:, None], s, torch.zeros_like(s))
        y_hist[-1, idx] = torch.where(good[:, None], yv, torch.zeros_like(yv))
        rho[-1, idx] = torch.where(good, 1.0 / sy.clamp(min=1e-10), torch.zeros_like(sy))
        gamma[idx] = torch.where(good, sy / (yv * yv).sum(dim=1).clamp(min=1e-30), gamma[idx])
        count[idx] += good.long()
        keep = accepted[:, None]
        theta[idx] = torch.where(keep, new_theta, th)
        f[idx] = torch.where(accepted, f_new, fi)
        g[idx] = torch.where(keep, g_new, gi)
        iterations[idx] += 1
        done = stalled | (g[idx].abs().amax(dim=1) <= tol)
        active[idx[done]] = False
    out = theta.view(b, num_classes, dim + 1)
    return Fit(out[..., :-1].contiguous(), out[..., -1].contiguous(), iterations.cpu(),
               evaluations.cpu())


def predict(fit: Fit, features: Tensor) -> Tensor:
    """Predicted classes ``B x n`` of every problem on ``features`` (argmax of logits)."""
    logits = torch.einsum("nd,bkd->bnk", features, fit.weight) + fit.bias[:, None, :]
    return logits.argmax(dim=2)
