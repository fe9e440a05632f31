"""The autoregressive likelihood (``pyrovae.parts.autoregressive``): its masks (no pixel's
conditional reads the pixel itself or a later one), its log p(x | z) against the chain rule
computed by hand pixel by pixel and against normalization over every image, its samples'
statistics against the exact probabilities, and the VAE built on it from the command line."""

import itertools
import json
import math

import pytest
import torch

from pyrovae import VAEConfig, build_vae
from pyrovae.cli import main
from pyrovae.parts import PixelCNN, PixelCNNLikelihood, PixelCNNLogisticLikelihood

torch.set_default_dtype(torch.float32)


def _spread(module, scale=3.0, seed=0):
    """Random weights far from the small default ones, so that the conditionals differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                scale * torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p[0].numel())
            )
    return module


def test_no_pixel_sees_itself_or_a_later_pixel_and_each_sees_the_ones_before():
    h, w = 5, 6
    net = _spread(PixelCNN(cond=2, per_pixel=2, channels=8, layers=3)).double()
    x = torch.rand(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    c = torch.rand(1, 2, h, w, dtype=torch.float64, requires_grad=True)
    out = net(x, c)
    for i in range(h * w):
        gx, gc = torch.autograd.grad(out[0, :, i // w, i % w].sum(), (x, c), retain_graph=True)
        gx, gc = gx.flatten(), gc[0].flatten(1)
        assert (gx[i:] == 0).all(), f"pixel {i} reads pixel(s) {gx[i:].nonzero().flatten() + i}"
        if i % w:
            assert gx[i - 1] != 0  # its left neighbour
        if i >= w:
            assert gx[i - w] != 0  # the pixel above
        # The decoder's maps enter at the pixel itself (1x1), through the stack at earlier ones.
        assert (gc[:, i] != 0).all()
        assert (gc[:, i + 1 :] == 0).all()


def _small(cls, shape, seed=0, **options):
    lik = cls(math.prod(shape), image_shape=shape, channels=6, layers=2, cond_channels=2, **options)
    return _spread(lik, seed=seed).double()


def test_log_likelihood_is_the_chain_rule_computed_pixel_by_pixel():
    shape = (1, 2, 3)
    lik = _small(PixelCNNLikelihood, shape)
    maps = torch.randn(4, lik.out_features, dtype=torch.float64)
    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float64))
    one_pass = lik(maps).log_prob(x)
    by_hand = torch.zeros(4, dtype=torch.float64)
    for i in range(6):
        # Pixels i and later replaced by noise: p(x_i | x_<i, z) must not change.
        garbage = torch.bernoulli(torch.full_like(x, 0.5))
        seen = torch.cat([x[:, :i], garbage[:, i:]], 1)
        logit = lik.net(seen.reshape(4, *shape), maps.reshape(4, 2, 2, 3))[:, 0].flatten(1)[:, i]
        by_hand += torch.distributions.Bernoulli(logits=logit).log_prob(x[:, i])
    torch.testing.assert_close(one_pass, by_hand, rtol=0, atol=1e-12)


def _every_binary_image(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)


def test_the_binary_model_sums_to_one_over_every_image_and_its_samples_follow_it():
    lik = _small(PixelCNNLikelihood, (1, 2, 3))
    maps = torch.randn(1, lik.out_features, dtype=torch.float64)
    images = _every_binary_image(6)  # (64, 6)
    log_p = lik(maps.expand(64, -1)).log_prob(images)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert log_p.exp().max() > 4 / 64  # far from uniform: the test below has power
    torch.manual_seed(0)
    n = 20000
    draws = lik(maps).sample((n,)).reshape(n, 6)
    index = (draws * 2 ** torch.arange(5, -1, -1, dtype=torch.float64)).sum(1).long()
    counts = torch.bincount(index, minlength=64).double()
    expected = n * log_p.exp()

    def chi_square(expected):
        return ((counts - expected) ** 2 / expected).sum().item()

    # 63 degrees of freedom: mean 63, standard deviation 11.2; the bound is 6 of them above.
    assert chi_square(expected) < 63 + 6 * 11.2
    other = lik(torch.randn(1, lik.out_features, dtype=torch.float64).expand(64, -1))
    assert chi_square(n * other.log_prob(images).exp()) > 63 + 6 * 11.2  # another z: refused


def test_the_8bit_model_sums_to_one_over_every_image():
    lik = _small(PixelCNNLogisticLikelihood, (1, 1, 2), seed=1)
    maps = torch.randn(1, lik.out_features, dtype=torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255
    images = torch.cartesian_prod(values, values)  # (65536, 2)
    log_p = lik(maps.expand(len(images), -1)).log_prob(images)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    torch.manual_seed(1)
    draws = lik(maps).sample((4000,)).reshape(4000, 2)
    assert ((draws * 255).round() == draws * 255).all()
    # The second pixel's mean given the first, against the exact one from the table.
    exact_mean = (log_p.exp().reshape(256, 256).sum(0) * values).sum()
    assert draws[:, 1].mean().item() == pytest.approx(
        exact_mean.item(), abs=4 * draws[:, 1].std().item() / 63
    )


def test_refused_with_one_line_for_colour_images_and_bad_options():
    with pytest.raises(ValueError, match="one-channel images"):
        PixelCNNLikelihood(12, image_shape=(3, 2, 2))
    with pytest.raises(ValueError, match="layers"):
        build_vae(
            VAEConfig(x_dim=4, z_dim=2, likelihood="pixelcnn", likelihood_options={"layers": -1})
        )
    with pytest.raises(ValueError, match="binary data"):
        PixelCNNLikelihood(4).check_data(torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="8-bit data"):
        PixelCNNLogisticLikelihood(4).check_data(torch.full((2, 4), 0.3))


def test_a_conv_vae_with_the_pixelcnn_trains_evaluates_and_samples(tmp_path, mnist_dir, capsys):
    run = str(tmp_path / "run")
    flags = ["--dataset", "binarized-mnist", "--data-dir", str(mnist_dir), "--z-dim", "4"]
    flags += ["--encoder", "conv", "--decoder", "conv", "--likelihood", "pixelcnn"]
    flags += ["--likelihood-option", "layers=1", "--likelihood-option", "channels=8"]
    assert (
        main(["train", *flags, "--epochs", "1", "--batch-size", "50", "--run-dir", run, "--quiet"])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", run, "--k", "4", "--n", "10", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert -784 * math.log(2) - 50 < result["log_px"] < 0
    assert main(["sample", run, "--n", "4"]) == 0
