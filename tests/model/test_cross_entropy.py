"""gpt3d/model/cross_entropy.py against torch's F.cross_entropy over the real vocabulary's columns: the loss and the
gradients of the logits (zero in the padded columns), the head weight and the hidden states, fp32 and bf16."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt3d.model.cross_entropy import cross_entropy

VOCAB, PADDED = 300, 320


def _case(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 17, 48, generator=gen).to(dtype)
    weight = (torch.randn(PADDED, 48, generator=gen) * 0.3).to(dtype)
    labels = torch.randint(0, VOCAB, (2, 17), generator=gen)
    return hidden, weight, labels


def _run(loss_fn, dtype):
    hidden, weight, labels = (t.clone() for t in _case(dtype))
    hidden.requires_grad_(), weight.requires_grad_()
    loss = loss_fn(hidden, weight, labels)
    loss.backward()
    return loss.float(), hidden.grad.float(), weight.grad.float()


def ours(hidden, weight, labels):
    logits = hidden @ weight.t()
    return cross_entropy(logits.flatten(0, 1), labels.flatten(), VOCAB)


def torchs(hidden, weight, labels):
    logits = hidden @ weight[:VOCAB].t()
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradients_equal_torchs_cross_entropy_over_the_real_vocabulary(dtype):
    got, want = _run(ours, dtype), _run(torchs, dtype)
    # fp32: summation order only. bf16: both round the same fp32 logit gradient once to bf16, then the GEMMs differ
    # only in the order of additions
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    assert got[2][VOCAB:].abs().max() == 0  # padded rows of the head weight get no gradient


def test_the_logit_gradient_is_softmax_minus_one_hot_over_the_tokens():
    logits = torch.randn(5, PADDED, requires_grad=True)
    labels = torch.tensor([0, 7, 299, 150, 7])
    loss = cross_entropy(logits * 1.0, labels, VOCAB)  # a temporary: the backward reuses its storage
    loss.backward()
    expected = torch.softmax(logits.detach()[:, :VOCAB], -1)
    expected[torch.arange(5), labels] -= 1
    torch.testing.assert_close(logits.grad[:, :VOCAB], expected / 5)
    assert logits.grad[:, VOCAB:].abs().max() == 0


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bf16_logits_give_the_bits_of_their_fp32_widening(impl):
    """bf16 logits are read in place (no fp32 copy) with fp32 math: the loss and the logit gradient are the bits the
    fp32 widening gives, its gradient rounded once to bf16; the gradient is written into the logits' storage."""
    gen = torch.Generator().manual_seed(5)
    base = (torch.randn(64, PADDED, generator=gen) * 4).to(torch.bfloat16)
    labels = torch.randint(0, VOCAB, (64,), generator=gen)
    logits = base.clone().requires_grad_()
    widened = base.float().requires_grad_()
    storage = []
    logits_in = logits * 1  # a temporary, as the head's output: the backward overwrites it
    logits_in.register_hook(lambda g: storage.append(g.untyped_storage().data_ptr()))
    loss = cross_entropy(logits_in, labels, VOCAB, impl)
    loss.backward()
    want = cross_entropy(widened * 1, labels, VOCAB, impl)
    want.backward()
    assert torch.equal(loss, want)
    assert torch.equal(logits.grad, widened.grad.to(torch.bfloat16))
    assert storage == [logits_in.untyped_storage().data_ptr()]


def test_labels_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError) as err:
        cross_entropy(torch.zeros(2, PADDED), torch.tensor([3, 300]), VOCAB)
    assert str(err.value) == "cross_entropy: labels must lie in [0, 300), got [3, 300]"
