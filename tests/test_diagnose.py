"""``pyrovae diagnose``: one command, its numbers the same as the library's functions give,
its files, and bad input refused in one line."""

import json

import pytest
import torch

from pyrovae.cli import main

LINEAR = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=4", "--z-dim", "3",
          "--likelihood", "gaussian-learned",
          "--n-train", "300", "--n-eval", "100", "--epochs", "2", "--quiet",
          "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("diagnose") / "run"
    assert main(["train", *LINEAR, "--run-dir", str(path)]) == 0
    return path


def test_diagnose_reports_the_latents_the_weights_and_ais_and_writes_its_files(run, capsys):
    capsys.readouterr()
    flags = ["--n", "40", "--k", "64", "--ais-steps", "20", "--ais-chains", "2", "--quiet",
             "--bdmc-steps", "30"]  # fmt: skip
    assert main(["diagnose", str(run), *flags, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lat, iw = out["latents"], out["iw"]
    assert lat["n"] == 40 and lat["dims"] == 3 and len(lat["kl_per_dim"]) == 3
    assert lat["rate"] == pytest.approx(lat["mutual_information"] + lat["marginal_kl"])
    assert lat["elbo"] == pytest.approx(-lat["distortion"] - lat["rate"])
    assert iw["k"] == 64 and iw["weights"]["k_ladder"][-1] == 64
    assert len(out["ais"]["acceptance_by_stage"]) == 20
    b = out["bdmc"]
    assert b["n"] == 100 and b["steps"] == 30
    assert b["width"] == pytest.approx(b["upper"] - b["lower"])
    figures = run / "figures"
    assert json.loads((figures / "diagnose.json").read_text())["latents"] == lat
    assert (figures / "diagnose.png").read_bytes()[:4] == b"\x89PNG"
    # The same numbers from Python: the library's functions on the same points and seed.
    from pyrovae.evaluation.latents import latent_diagnostics
    from pyrovae.runs import _points, load_run

    vae, data, _ = load_run(str(run), splits=("test",))
    x = _points(data, "test", 40, 0)
    torch.manual_seed(0)
    import pyro

    pyro.set_rng_seed(0)
    again = latent_diagnostics(vae, x, samples=4)
    assert again.to_dict()["kl_per_dim"] == pytest.approx(lat["kl_per_dim"])
    assert again.rate == pytest.approx(lat["rate"])
    # The table, for a person.
    assert main(["diagnose", str(run), "--n", "40", "--k", "64", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "mutual information I(x; z)" in text and "active units" in text
    assert "Pareto k̂ above 0.7" in text and "diagnose.png" in text


def test_diagnose_refuses_bad_input_in_one_line_and_writes_nothing(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    before = sorted(p.name for p in (run / "figures").iterdir())
    assert main(["diagnose", str(run), "--k", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--k" in err
    assert sorted(p.name for p in (run / "figures").iterdir()) == before


def test_the_report_is_one_self_contained_page_with_every_section(run, tmp_path, capsys):
    """report.html: every figure a data URI (nothing fetched from elsewhere), the sections a
    reader looks for, the diagnosis's numbers as diagnose computes them."""
    import re

    out = tmp_path / "page.html"
    flags = ["--n", "40", "--k", "64", "--quiet", "--output", str(out)]
    assert main(["report", str(run), *flags]) == 0
    page = out.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    for title in ("Configuration", "Training", "Map of the codes", "Diagnosis"):
        assert f"<h2>{title}</h2>" in page
    found = json.loads((run / "figures" / "diagnose.json").read_text())
    assert f"{found['latents']['mutual_information']:.3f}" in page


def test_the_report_renders_in_a_headless_browser(run, tmp_path):
    """Where Chromium is installed: the page renders to a screenshot that is not blank."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium on this machine (apt install chromium)")
    out = tmp_path / "page.html"
    flags = ["--n", "40", "--k", "64", "--quiet", "--output", str(out)]
    assert main(["report", str(run), *flags]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,2000", f"--screenshot={shot}", out.as_uri()],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    import matplotlib.pyplot as plt

    pixels = torch.from_numpy(plt.imread(shot))
    assert pixels.shape[:2] == (2000, 1000) and pixels.std() > 0.05  # text and figures


def test_a_model_with_two_latents_gets_the_weights_diagnostics_and_says_why_not_the_rest(
    tmp_path, capsys
):
    run = tmp_path / "two"
    flags = [*LINEAR, "--latent-layers", "2", "--z1-dim", "3", "--hidden", "8",
             "--hidden-top", "8"]  # fmt: skip
    assert main(["train", *flags, "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(run), "--n", "30", "--k", "64", "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latents"] is None and "this guide has 2 (z1, z2)" in out["latents_skipped"]
    assert out["iw"]["weights"]["k_ladder"][-1] == 64
    assert (run / "figures" / "diagnose.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(run), "--n", "30", "--k", "64", "--quiet"]) == 0
    assert "not applicable" in (run / "report.html").read_text()
