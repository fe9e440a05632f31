"""Every registered prior × guide: the combinations that make sense train and evaluate from the
command line by name and from Python with the parts passed as objects; the others (a real prior
with a binary guide, a pathwise estimator on binary latents) are refused with one clear line."""

import itertools
import json
import math

import pytest
import torch

from pyrovae import VAE, evaluate_vae, make_estimator
from pyrovae.parts.guides import GUIDES
from pyrovae.parts.likelihoods import LIKELIHOODS
from pyrovae.parts.nets import NETS
from pyrovae.parts.priors import PRIORS
from pyrovae.producers import check_applies, make_producer
from pyrovae.training import Trainer

# A VampPrior with the flow guide's default (iaf) transform warns that it is slow; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:a VampPrior with the flow guide's iaf")
PAIRS = list(itertools.product(PRIORS.names(), GUIDES.names()))
SMALL = {"mixture": {"components": 3}, "vampprior": {"components": 4}}


def _kinds(prior: str, guide: str):
    return PRIORS.get(prior).latent, GUIDES.get(guide).latent


def _estimator(guide: str) -> str:
    return "score-function" if GUIDES.get(guide).latent == "binary" else "pathwise"


@pytest.mark.parametrize("prior,guide", PAIRS, ids=[f"{p}-{g}" for p, g in PAIRS])
def test_every_prior_and_guide_by_name_from_the_command_line(prior, guide, tmp_path, capsys):
    from pyrovae.cli import main

    run = str(tmp_path / "run")
    argv = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian", "--epochs", "1"]
    argv += ["--n-train", "100", "--n-eval", "20", "--z-dim", "2", "--hidden", "8", "--quiet"]
    argv += ["--prior", prior, "--guide", guide, "--run-dir", run]
    for key, value in SMALL.get(prior, {}).items():
        argv += ["--prior-option", f"{key}={value}"]
    if guide == "local":
        argv += ["--guide-option", "steps=3"]
    prior_kind, guide_kind = _kinds(prior, guide)
    if prior_kind != guide_kind:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "choose a prior and a guide of the same kind" in err and "\n" not in err
        return
    if guide_kind == "binary":  # the default estimator is pathwise: refused, naming the fix
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "score-function" in err and "\n" not in err
    assert main(argv + ["--estimator", _estimator(guide)]) == 0
    capsys.readouterr()
    assert main(["evaluate", run, "--k", "10", "--n", "10", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["log_px"]) and result["n"] == 10


@pytest.mark.parametrize("prior,guide", PAIRS, ids=[f"{p}-{g}" for p, g in PAIRS])
def test_every_prior_and_guide_as_objects_from_python(prior, guide):
    torch.manual_seed(0)
    z_dim, x_dim = 2, 5
    prior_part = PRIORS.get(prior)(z_dim, **SMALL.get(prior, {}))
    family = GUIDES.get(guide)(z_dim)
    likelihood = LIKELIHOODS.get("bernoulli")(x_dim)
    encoder = NETS.get("mlp")(x_dim, family.in_features, (8,), "tanh")
    decoder = NETS.get("mlp")(z_dim, likelihood.out_features, (8,), "tanh")
    if _kinds(prior, guide)[0] != _kinds(prior, guide)[1]:
        with pytest.raises(ValueError, match="same kind"):
            VAE(encoder, decoder, prior_part, likelihood, family)
        return
    vae = VAE(encoder, decoder, prior_part, likelihood, family)
    x = (torch.rand(40, x_dim) < 0.4).float()
    producer = make_producer(vae)
    estimator = make_estimator(_estimator(guide))
    estimator.prepare(x[:10])  # shapes a baseline's state to the batch
    check_applies(producer, estimator, x[:10])
    trainer = Trainer(producer, estimator, list(vae.parameters()), lr=1e-2)
    losses = [trainer.step(x[i : i + 10], 40) for i in range(0, 40, 10)]
    assert all(math.isfinite(v) for v in losses)
    result = evaluate_vae(vae.eval(), x[:8], k=20, progress=False)
    assert math.isfinite(result.log_px) and result.log_px >= result.elbo - 1e-6
