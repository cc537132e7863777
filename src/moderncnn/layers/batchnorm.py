"""Batch normalization from scratch, as d2l writes it (section "Batch Normalization").

Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML, arXiv:1502.03167.

``batch_norm`` keeps the book's signature and arithmetic; ``BatchNorm`` keeps
the book's constructor and parameter shapes (``gamma``/``beta`` shaped
``(1, C)`` or ``(1, C, 1, 1)``), so a state dict saved by the book's own class
loads into it. Where we part from the book, and why:

* The book picks training or prediction with ``torch.is_grad_enabled()``; the
  module here uses ``self.training`` (``model.train()`` / ``model.eval()``),
  as ``nn.BatchNorm2d`` does, so a forward under ``torch.no_grad()`` in
  training mode still normalises with the batch statistics. The function keeps
  the book's rule when it is not told the mode.
* ``moving_mean``/``moving_var`` are buffers, not plain attributes: they follow
  ``.to(device)``/``.double()`` and are saved in the state dict (the book's are
  neither). A book state dict therefore lacks them; load it with
  ``strict=False`` and the moving statistics start from 0 and 1, as in the book.
* Running variance: the book (and the default here) averages the *biased*
  batch variance ``mean((x - mean)**2)``; PyTorch's ``nn.BatchNorm*d`` and the
  paper (Algorithm 2, step 10: ``Var[x] = m/(m-1) E_B[sigma_B^2]``) use the
  *unbiased* one, i.e. the biased variance times ``n / (n - 1)`` with ``n`` the
  number of values per channel (batch size, times H*W for images). Both
  normalise the batch itself with the biased variance, so training-mode outputs
  and ``moving_mean`` agree; only ``moving_var`` (hence eval-mode outputs)
  differs, by a relative amount of order ``1/n``. ``unbiased=True`` matches
  PyTorch (and the paper) exactly; it is the right choice for new work, while
  ``unbiased=False`` reproduces the book.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["batch_norm", "BatchNorm"]


def batch_norm(
    X: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    moving_mean: torch.Tensor,
    moving_var: torch.Tensor,
    eps: float,
    momentum: float,
    *,
    training: bool | None = None,
    unbiased: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The book's ``batch_norm``: returns ``(Y, new_moving_mean, new_moving_var)``.

    ``X`` is ``(N, C)`` (after a fully connected layer; statistics over the
    batch) or ``(N, C, H, W)`` (after a convolution; statistics per channel
    over batch and positions). ``momentum`` is the book's: the moving averages
    become ``momentum * moving + (1 - momentum) * batch`` with the book's 0.9.
    That is PyTorch's ``nn.BatchNorm2d(momentum=0.1)``, whose rule
    ``(1 - momentum) * running + momentum * batch`` names the other weight.

    ``training=None`` decides the mode as the book does, by
    ``torch.is_grad_enabled()``; pass ``True``/``False`` to choose it. In
    prediction mode the moving statistics are used and returned unchanged.
    ``unbiased=True`` updates ``moving_var`` with the unbiased batch variance,
    as PyTorch does (see the module docstring).
    """
    if X.dim() not in (2, 4):
        raise ValueError(f"batch_norm expects a 2-D (N, C) or 4-D (N, C, H, W) tensor, got shape {tuple(X.shape)}")
    if training is None:
        training = torch.is_grad_enabled()
    if not training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        dims = (0,) if X.dim() == 2 else (0, 2, 3)
        mean = X.mean(dim=dims, keepdim=True)
        var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        if unbiased:
            n = X.numel() // X.shape[1]
            if n < 2:
                raise ValueError(
                    f"the unbiased running variance needs more than one value per channel, got input of shape "
                    f"{tuple(X.shape)}: use a larger batch or unbiased=False"
                )
            var = var * (n / (n - 1))
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.detach(), moving_var.detach()


class BatchNorm(nn.Module):
    """The book's ``BatchNorm(num_features, num_dims)``: ``num_dims`` 2 after a
    fully connected layer, 4 after a convolution.

    Numerically ``nn.BatchNorm1d``/``nn.BatchNorm2d(num_features, eps=1e-5,
    momentum=0.1)`` when built with ``unbiased=True``; with the default
    ``unbiased=False`` (the book) only the running variance differs. The book's
    ``momentum=0.9`` is PyTorch's ``momentum=0.1`` (see :func:`batch_norm`).
    """

    def __init__(
        self, num_features: int, num_dims: int, *, eps: float = 1e-5, momentum: float = 0.9, unbiased: bool = False
    ):
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (after nn.Linear) or 4 (after nn.Conv2d), got {num_dims}")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum, self.unbiased = eps, momentum, unbiased
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.dim() != self.num_dims:
            raise ValueError(
                f"BatchNorm({self.num_features}, num_dims={self.num_dims}) expects a {self.num_dims}-D input, "
                f"got shape {tuple(X.shape)}: use num_dims=2 after nn.Linear and 4 after nn.Conv2d"
            )
        Y, moving_mean, moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=self.eps, momentum=self.momentum, training=self.training, unbiased=self.unbiased,
        )
        if self.training:
            # in place: the buffers stay the same tensors, so references to them (DDP, hooks) stay valid
            with torch.no_grad():
                self.moving_mean.copy_(moving_mean)
                self.moving_var.copy_(moving_var)
        return Y

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, momentum={self.momentum}, unbiased={self.unbiased}"
