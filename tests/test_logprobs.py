"""The token log-prob kernels (`reczero.policy.logprobs`) on tiny tensors: values worked out by hand, and
both kernels against log_softmax and its autograd gradient."""

from __future__ import annotations

import math

import pytest
import torch

from reczero.policy import logprobs
from reczero.policy.logprobs import head_logprobs, token_logprobs

LN2 = math.log(2.0)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# --- token_logprobs ---------------------------------------------------------------------------


def test_token_logprobs_by_hand():
    # row 0 position 0: uniform over 3 -> log(1/3); position 1: weights 1, 2, 1 -> token 1 has 2/4.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, LN2, 0.0]]])  # [1, 2, 3]
    tokens = torch.tensor([[0, 1]])  # [1, 2]
    close(token_logprobs(logits, tokens), [[math.log(1 / 3), math.log(0.5)]])
    # temperature 2 on logits (0, 2 ln2, 0) gives (0, ln2, 0): token 1 again has 2/4.
    hot = torch.tensor([[[0.0, 2 * LN2, 0.0]]])
    close(token_logprobs(hot, torch.tensor([[1]]), temperature=2.0), [[math.log(0.5)]])


def test_token_logprobs_matches_log_softmax_and_has_grad():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)  # [N, T, V]
    tokens = torch.randint(0, 11, (3, 5))  # [N, T]
    out = token_logprobs(logits, tokens, temperature=0.7)
    reference = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(out, reference.detach())
    out.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    half = token_logprobs(logits.detach().bfloat16(), tokens)
    assert half.dtype == torch.float32
    close(half, torch.log_softmax(logits.detach().bfloat16().float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1))


def test_token_logprobs_validates():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
    assert token_logprobs(torch.zeros(0, 2, 3), torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2)


# --- head_logprobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_head_logprobs_in_chunks_equals_autograd_through_the_logits(monkeypatch, bias):
    """The chunked head (gradient from each chunk's softmax, computed in the forward pass) equals
    log_softmax(h @ W.T + b) and its autograd gradient; 7 rows in chunks of 16 elements / 5 = 3 rows."""
    monkeypatch.setattr(logprobs, "_HEAD_CHUNK_ELEMENTS", 16)
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 5, bias=bias).requires_grad_(False)
    hidden = torch.randn(7, 6, generator=gen, dtype=torch.float64).float().requires_grad_()
    tokens = torch.randint(0, 5, (7,), generator=gen)
    weights = torch.randn(7, generator=gen)
    out = head_logprobs(head, hidden, tokens, temperature=0.7)
    (out * weights).sum().backward()
    grad, hidden.grad = hidden.grad.clone(), None
    expected = torch.log_softmax(head(hidden) / 0.7, -1).gather(-1, tokens[:, None]).squeeze(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, hidden.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        head_logprobs(head, hidden, tokens, temperature=0.0)
