"""Guide families trained together with their model, as every user trains them: on
linear-Gaussian data, whose exact log p(x) the trained model gives in closed form, a family that
can hold the exact posterior (full-rank, and near enough a flow) ends within Monte Carlo error of
log p(x), and never further from it than the diagonal family trained the same way.

Everything but the data's dimensions, the model's latent width, the encoder and the seed is the
command line's default: pathwise ELBO, Adam at a constant 1e-3, batches of 100. The budget is
3000 steps (1000 training points, 300 epochs). "Monte Carlo error" is that of the estimate
``pyrovae evaluate RUN --k 1`` prints: the standard error of the K = 1 ELBO over the 2000 test
points (about 0.04 nats here); the gaps themselves are computed in closed form where the family
allows (exact log p(x) - ELBO = KL(q ‖ p(z | x)), no Monte Carlo at all), else from 2000
particles per point.

At the command line's default latent width of 50, 200 epochs at the constant rate leave the
MLP-encoded families 0.12 to 0.17 nats short, above this error (the pathwise gradient's noise at
the optimum: with STL or a cosine schedule they end at 0.01 to 0.02; see
``experiments/guides_joint.py``); these widths are the ones where they do not.
"""

import functools
import tempfile

import pytest
import torch

from pyrovae import TrainConfig, VAEConfig, build_vae, evaluate_vae, load_dataset, train
from pyrovae.evaluation.truth import exact_guide_gap, exact_log_px

EPOCHS, N_TRAIN = 300, 1000

# (x_dim, the data's z_dim, the model's z_dim, encoder, seed): exact latent widths and one with
# two latents to spare, both encoders, three seeds.
SETTINGS = [
    (5, 2, 2, "linear", 0),
    (5, 2, 4, "mlp", 1),
    (8, 3, 3, "linear", 2),
    (8, 3, 3, "mlp", 2),
]


def _data(x_dim, data_z, seed):
    return load_dataset("linear-gaussian", x_dim=x_dim, z_dim=data_z, seed=seed, n_train=N_TRAIN)


def _gap(vae, x):
    """(exact log p(x) - ELBO, mean over the points (``exact_guide_gap``); the standard
    error of ``evaluate --k 1``'s ELBO) of a trained VAE on test points x."""
    res = evaluate_vae(vae, x, k=1, progress=False)
    assert res.exact_log_px == pytest.approx(exact_log_px(vae, x).mean().item(), abs=1e-6)
    return exact_guide_gap(vae, x).mean().item(), res.elbo_stderr


@functools.cache
def _trained_gap(x_dim, data_z, z_dim, encoder, seed, guide):
    data = _data(x_dim, data_z, seed)
    cfg = TrainConfig(dataset="linear-gaussian", epochs=EPOCHS, seed=seed)
    model = VAEConfig(
        z_dim=z_dim, encoder=encoder, decoder="linear", likelihood="gaussian-learned", guide=guide
    )
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg, model, run_dir=f"{tmp}/run", progress=False, data=data)
    return _gap(res.vae, data.test)


def _assert_as_close_as_the_diagonal(setting, guide):
    gap, stderr = _trained_gap(*setting, guide)
    diagonal, diagonal_stderr = _trained_gap(*setting, "diagonal-gaussian")
    assert gap >= -1e-9  # the ELBO bounds log p(x)
    assert gap < 3 * stderr, (guide, gap, stderr)
    # Never further than the diagonal family, beyond the error of comparing two estimates.
    assert gap < diagonal + 2 * (stderr**2 + diagonal_stderr**2) ** 0.5, (gap, diagonal)
    return gap, diagonal


@pytest.mark.parametrize("setting", SETTINGS, ids=["-".join(map(str, s)) for s in SETTINGS])
def test_full_rank_guide_trained_with_its_model_ends_at_the_exact_log_likelihood(setting):
    _assert_as_close_as_the_diagonal(setting, "full-rank")


def test_flow_guide_trained_with_its_model_ends_at_the_exact_log_likelihood():
    # The MLP encoder: a flow with a linear encoder is slower to get there (see the closing
    # note of issue 22 in the history: 0.31 nats at this budget for seed 0, 0.02 for seed 1).
    _assert_as_close_as_the_diagonal((5, 2, 4, "mlp", 1), "flow")


def test_two_layer_full_rank_guide_ends_no_further_than_the_diagonal_one(tmp_path):
    """The two-layer model x <- z1 <- z2 with linear nets, trained with p(z1 | z2) held at a
    constant scale (the log-scale rows of the top decoder kept at zero, so that the model stays
    linear-Gaussian and its log p(x) exact): the full-rank q(z1 | x) ends no further from
    log p(x) than the diagonal one. Neither reaches it: q(z2 | z1) is diagonal, and the exact
    p(z2 | z1) is not."""
    data = _data(5, 2, 0)
    gaps = {}
    for guide in ("diagonal-gaussian", "full-rank"):
        torch.manual_seed(0)
        cfg = VAEConfig(
            x_dim=5,
            z_dim=2,
            z1_dim=3,
            latent_layers=2,
            encoder="linear",
            decoder="linear",
            likelihood="gaussian-learned",
            guide=guide,
        )
        vae = build_vae(cfg)
        top = vae.top_decoder[0]
        keep = torch.ones_like(top.weight)
        keep[cfg.z1_dim :] = 0
        with torch.no_grad():
            top.weight.mul_(keep)
        top.weight.register_hook(lambda grad, keep=keep: grad * keep)
        train(
            TrainConfig(dataset="linear-gaussian", epochs=EPOCHS, seed=0),
            run_dir=tmp_path / guide,
            progress=False,
            data=data,
            model=(vae.model, vae.guide),
        )
        assert vae.linear_gaussian() is not None  # still linear-Gaussian
        x = data.test.double()
        vae = vae.double()
        with torch.no_grad():
            log_w = vae.particles(x, None, 2000, None).log_w
        exact = vae.linear_gaussian().log_marginal(x)
        stderr = log_w[0].std().item() / x.shape[0] ** 0.5  # evaluate --k 1's
        gaps[guide] = ((exact - log_w.mean(0)).mean().item(), stderr)
    (full, se_full), (diagonal, se_diagonal) = gaps["full-rank"], gaps["diagonal-gaussian"]
    assert 0 < full < diagonal + 2 * (se_full**2 + se_diagonal**2) ** 0.5, gaps
