"""Token log-prob kernels: the log-probs of given tokens, computed without keeping [tokens, vocabulary] alive.

`token_logprobs` takes logits a model's own forward made; `head_logprobs` takes the decoder's hidden
states and the LM head, and never materialises the logits of more than one chunk. Both are float32
and divide by the sampling temperature, so they are the log-probs of the distribution the rollout
sampled from; `policy.forward` uses them for the GRPO loss.
"""

from __future__ import annotations

import torch

# rows of [rows, vocabulary] float32 logits that `head_logprobs` holds at once: 64 MiB for a 48k vocabulary
_HEAD_CHUNK_ELEMENTS = 16 * 2**20


class _TokenLogprobs(torch.autograd.Function):
    """`token_logprobs` on flattened [M, V] logits, a chunk of rows at a time, in float32.

    Only the logits themselves (which the caller holds anyway) and the [M] log-sum-exps are kept for
    the backward pass, which recomputes each chunk's softmax: no float32 copy of [M, V] stays alive.
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature: float):  # [M, V], [M]
        rows = max(1, 2**24 // max(1, logits.shape[-1]))  # 64 MiB of float32 logits per chunk
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # [M]
        lse = torch.empty_like(out)  # [M]
        for start in range(0, logits.shape[0], rows):
            z = logits[start : start + rows].float() / temperature  # [c, V]
            lse[start : start + rows] = torch.logsumexp(z, dim=-1)
            picked = z.gather(-1, tokens[start : start + rows, None]).squeeze(-1)  # [c]
            out[start : start + rows] = picked - lse[start : start + rows]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.rows = temperature, rows
        return out

    @staticmethod
    def backward(ctx, grad):  # grad [M]
        logits, tokens, lse = ctx.saved_tensors
        t, rows = ctx.temperature, ctx.rows
        out = torch.empty_like(logits)  # [M, V]
        for start in range(0, logits.shape[0], rows):
            end = start + rows
            # d(z_token - lse)/dz = onehot - softmax(z), and dz/dlogits = 1 / T
            probs = (logits[start:end].float() / t).sub_(lse[start:end, None]).exp_()  # [c, V]
            g = grad[start:end, None] / t  # [c, 1]
            chunk = probs.mul_(-g).scatter_add_(-1, tokens[start:end, None], g)  # [c, V]
            out[start:end] = chunk.to(logits.dtype)
        return out, None, None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each sampled token under ``softmax(logits / temperature)``: [N, T] float32.

    logits [N, T, V]: the logits that predict `tokens` [N, T] (already shifted by the caller).
    Computed as ``logit[token] - logsumexp(logits)`` in float32, a chunk of positions at a time; for
    backward only the logits and the [N, T] log-sum-exps are kept (`_TokenLogprobs`), so bf16 logits
    never get a float32 copy of their full size. Dividing by the sampling temperature makes these
    the log-probs of the distribution the completions were drawn from.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits [N, T, V] and tokens [N, T], got {tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[0] * logits.shape[1] == 0:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])  # [N * T, V]
    out = _TokenLogprobs.apply(flat, tokens.reshape(-1).long(), float(temperature))  # [N * T]
    return out.reshape(tokens.shape)  # [N, T]


class _LinearTokenLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / T)[token] for a frozen `weight`, one chunk of rows at a time.

    The derivative of a token's log-prob by its hidden state is (w_token - E_p[w]) / T, a vector of
    the hidden size: it is computed in the forward pass from each chunk's softmax, so the backward
    needs neither the logits nor their softmax. This costs the same matmuls as autograd through the
    full logits (one projection, one softmax @ weight), but keeps [chunk, V] instead of [M, V] alive.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature: float):  # [M, H], [V, H], [V] | None, [M]
        rows = max(16, _HEAD_CHUNK_ELEMENTS // weight.shape[0])
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # [M]
        jac = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], rows):
            h, tok = hidden[start : start + rows], tokens[start : start + rows]  # [c, H], [c]
            z = (h @ weight.T).float()  # [c, V]
            if bias is not None:
                z += bias.float()
            if temperature != 1.0:
                z /= temperature
            lse = torch.logsumexp(z, dim=-1)  # [c]
            out[start : start + rows] = z.gather(-1, tok[:, None]).squeeze(-1) - lse
            if jac is not None:
                probs = z.sub_(lse[:, None]).exp_()  # [c, V], in place of the logits
                expected = probs.to(weight.dtype) @ weight  # [c, H]: E_p[w]
                jac[start : start + rows] = (weight[tok].float() - expected.float()) / temperature
        ctx.save_for_backward(jac)
        ctx.hidden_dtype = hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad):  # grad [M]
        (jac,) = ctx.saved_tensors
        return (grad[:, None] * jac).to(ctx.hidden_dtype), None, None, None, None


def head_logprobs(head: torch.nn.Linear, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float):
    """Log-probs [M] float32 of `tokens` [M] under the LM `head` applied to `hidden` [M, H]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _LinearTokenLogprobs.apply(hidden, head.weight, head.bias, tokens, float(temperature))
