"""The fast Bernoulli density, softplus and tanh agree with their textbook forms, fallbacks
included."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.parts.distributions import FactorizedBernoulli, softplus
from pyrovae.parts.nets import Tanh
from pyrovae.runtime import tune_allocator


def reference_log_prob(logits, value):
    """Torch's own Bernoulli, in float64."""
    return dist.Bernoulli(logits=logits.double()).to_event(1).log_prob(value.double())


@pytest.mark.parametrize("d", [784, 30, 7])
@pytest.mark.parametrize("scale", [0.1, 4.0, 60.0])
def test_log_prob_matches_torch_bernoulli_without_grad(d, scale):
    g = torch.Generator().manual_seed(d)
    logits = torch.randn(50, 3, d, generator=g) * scale
    value = torch.bernoulli(torch.full((3, d), 0.3), generator=g)
    with torch.no_grad():
        got = FactorizedBernoulli(logits).log_prob(value)
    expected = reference_log_prob(logits, value)
    assert got.shape == (50, 3) and got.dtype == torch.float32
    # float32 rounding of sums of up to 784 terms of size up to `scale`
    torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=1e-4)


def test_confidently_wrong_pixels_use_the_exact_form():
    """Products of sigmoids leave the float32 range when pixels are wildly wrong; those rows
    must still come out right (a product-of-sigmoids-only version gives -inf or garbage)."""
    value = torch.ones(4, 784)
    logits = torch.full((4, 784), 3.0)
    logits[1, :40] = -95.0  # sigmoid underflows to 0 in float32
    logits[2, ::16] = -30.0  # each group of 16 holds one 1e-13 factor: fine
    logits[3, :32] = -30.0  # two such factors share a group: below the float32 range
    with torch.no_grad():
        got = FactorizedBernoulli(logits).log_prob(value)
    expected = reference_log_prob(logits, value)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-3)


def test_non_binary_values_and_gradients_use_the_plain_form():
    logits = torch.randn(5, 12, requires_grad=True)
    value = torch.rand(12)  # not binary: x l - softplus(l), as torch defines it
    got = FactorizedBernoulli(logits).log_prob(value)
    expected = dist.Bernoulli(logits=logits, validate_args=False).to_event(1).log_prob(value)
    torch.testing.assert_close(got, expected)
    (g,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(g, (value - torch.sigmoid(logits)).detach())
    with torch.no_grad():
        torch.testing.assert_close(FactorizedBernoulli(logits).log_prob(value), expected)


def test_softplus_is_exact_to_rounding_and_its_derivative_the_sigmoid():
    """The vectorized softplus the Bernoulli density trains with: within float32's rounding of
    the exact value (as torch's own is: the output's ulp, up to 1e-6 at |x| near 10), exact in
    float64, and autograd's derivative σ(x) everywhere, at x = 0 too, where a relu or clamp
    for max(x, 0) would give 0 instead of ½."""
    x = torch.linspace(-120, 120, 24001)
    # log(e^0 + e^x) exactly (torch's own softplus returns x itself beyond x = 20)
    reference = torch.logaddexp(x.double(), torch.zeros((), dtype=torch.float64))
    assert (softplus(x).double() - reference).abs().max() <= 1e-6
    torch.testing.assert_close(softplus(x.double()), reference, rtol=1e-15, atol=1e-14)
    points = torch.tensor([0.0, -3.0, -1e-9, 1e-9, 2.5, 40.0, -40.0], dtype=torch.float64)
    points.requires_grad_(True)
    (g,) = torch.autograd.grad(softplus(points).sum(), points)
    torch.testing.assert_close(g, torch.sigmoid(points.detach()), rtol=1e-12, atol=1e-15)


def test_behaves_as_a_pyro_distribution_under_plates():
    logits = torch.randn(6)
    d = FactorizedBernoulli(logits)
    assert d.event_shape == (6,) and d.batch_shape == ()
    with pyro.plate("p", 4):
        trace = pyro.poutine.trace(lambda: pyro.sample("x", d)).get_trace()
    site = trace.nodes["x"]
    assert site["value"].shape == (4, 6) and site["fn"].batch_shape == (4,)
    assert isinstance(site["fn"], FactorizedBernoulli)
    assert set(site["value"].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(d.mean, torch.sigmoid(logits))


def test_tanh_matches_torch_tanh():
    a = torch.linspace(-20, 20, 100001)
    with torch.no_grad():
        fast = Tanh()(a)
    assert (fast - torch.tanh(a)).abs().max() < 2e-7
    b = a.clone().requires_grad_()
    assert torch.equal(Tanh()(b), torch.tanh(b))  # training keeps torch.tanh


def test_tune_allocator_is_idempotent():
    first = tune_allocator()
    assert tune_allocator() == first
