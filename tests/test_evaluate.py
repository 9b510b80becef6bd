"""course_lib.evaluate (chapter 17): KID, the classifier score, class balance, the FD's bias fit, intervals,
the 2AFC study, the convention's checks, the command line, and parity with torchmetrics on the same features."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from course_lib import evaluate as ev
from course_lib.classifier import DigitClassifier
from course_lib.metrics import frechet_distance

torchmetrics = pytest.importorskip("torchmetrics")  # a test dependency (pyproject [test]); present in CI


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Features(nn.Module):
    """A fixed random feature network for torchmetrics' custom-feature path (parity needs no training)."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = DigitClassifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def _digit_like(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return (torch.rand(n, 1, 8, 8, generator=_gen(seed)) * 2 - 1 + shift).clamp(-1, 1)


# ---------------------------------------------------------------- parity with torchmetrics


def test_fd_matches_torchmetrics_fid_with_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    feats = _Features().eval()
    real, fake = _digit_like(300, 1), _digit_like(300, 2, shift=0.3)
    fid = FrechetInceptionDistance(feature=feats, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    theirs = float(fid.compute())
    with torch.no_grad():
        ours = frechet_distance(feats(fake), feats(real))
    assert ours > 1e-3
    assert abs(ours - theirs) <= 1e-4 * ours, (ours, theirs)


def test_kid_matches_torchmetrics_on_whole_sets():
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    feats = _Features().eval()
    real, fake = _digit_like(200, 3), _digit_like(200, 4, shift=0.2)
    kid = KernelInceptionDistance(feature=feats, subsets=1, subset_size=200, normalize=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    theirs = float(kid.compute()[0])
    with torch.no_grad():
        f_real, f_fake = feats(real).double(), feats(fake).double()
    ours = ev.kernel_distance(f_real, f_fake, subset_size=200, n_subsets=1).mean
    assert ours == pytest.approx(float(poly_mmd(f_real, f_fake)), rel=1e-10)  # their formula, in float64
    # the metric object keeps float32 features: the kernels (~1) cancel to ~1e-5, so float32 costs ~1 %
    assert ours == pytest.approx(theirs, rel=0.05) and ours != pytest.approx(theirs, rel=1e-6)


def test_inception_score_matches_torchmetrics_given_its_shuffle():
    from torchmetrics.image.inception import InceptionScore

    class Logits(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10] * 3.0

    x = torch.randn(500, 1, 8, 8, generator=_gen(5))
    metric = InceptionScore(feature=Logits(), splits=10)
    metric.update(x)
    torch.manual_seed(11)
    theirs = [float(v) for v in metric.compute()]
    torch.manual_seed(11)
    perm = torch.randperm(500)  # torchmetrics shuffles with the global generator before splitting
    ours = ev.inception_score(torch.softmax(Logits()(x), dim=1)[perm], n_splits=10)
    assert ours == pytest.approx(theirs, rel=1e-5)


# ---------------------------------------------------------------- the metrics


def test_kid_is_unbiased_where_the_fd_is_not():
    # two samples of one Gaussian: FD's mean over draws is clearly positive and shrinks with N; KID's is ~0
    fds, kids = {}, {}
    for n in (100, 400):
        f, k = [], []
        for s in range(20):
            a, b = torch.randn(n, 8, generator=_gen(2 * s)), torch.randn(n, 8, generator=_gen(2 * s + 1))
            f.append(frechet_distance(a, b))
            k.append(ev.kernel_distance(a, b, subset_size=n, n_subsets=1).mean)
        fds[n], kids[n] = torch.tensor(f), torch.tensor(k)
    assert fds[100].mean() > 2 * fds[400].mean() > 0.1
    for n in (100, 400):
        assert abs(float(kids[n].mean())) < 3 * float(kids[n].std()) / math.sqrt(20)


def test_kid_grows_with_a_shift_and_checks_its_input():
    a, b = torch.randn(300, 4, generator=_gen(0)), torch.randn(300, 4, generator=_gen(1))
    near = ev.kernel_distance(a, b, generator=_gen(2), n_subsets=5).mean
    far = ev.kernel_distance(a, b + 1.0, generator=_gen(2), n_subsets=5).mean
    assert far > 10 * abs(near)
    with pytest.raises(ValueError, match="subset_size must be at most"):
        ev.kernel_distance(a, b[:10], subset_size=50)
    with pytest.raises(ValueError, match="same F"):
        ev.kernel_distance(a, b[:, :3])
    with pytest.raises(ValueError, match="2-D tensor"):
        ev.kernel_distance(a[0], b)


def test_inception_score_limits():
    k = 10
    confident_balanced = torch.eye(k).repeat(20, 1)  # 200 one-hot rows, every class equally often
    assert ev.inception_score(confident_balanced, n_splits=1)[0] == pytest.approx(k)
    uniform = torch.full((200, k), 1.0 / k)
    assert ev.inception_score(uniform, n_splits=4)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_splits must be at most"):
        ev.inception_score(uniform[:3], n_splits=4)


def test_class_balance():
    pred = torch.tensor([0, 0, 1, 1])
    ref = torch.tensor([0, 1, 2, 3])
    out = ev.class_balance(pred, ref, 4)
    assert out["total_variation"] == pytest.approx(0.5)
    assert out["missing"] == [2, 3]
    with pytest.raises(ValueError, match="labels must lie in"):
        ev.class_balance(torch.tensor([5]), ref, 4)
    with pytest.raises(ValueError, match="integer tensor"):
        ev.class_balance(torch.tensor([0.5]), ref, 4)


def test_bias_fit_recovers_a_known_line():
    # Gaussian features with a mean offset d: E FD_N = |d|^2 + (bias ~ c / N); the fit's intercept is near |d|^2
    ref = torch.randn(20_000, 4, generator=_gen(0))
    feats = torch.randn(4000, 4, generator=_gen(1)) + torch.tensor([1.0, 0, 0, 0])
    fit = ev.frechet_distance_bias(feats, ref, sizes=(100, 200, 400, 1000, 4000), n_repeats=8, generator=_gen(2))
    assert fit.slope > 0  # biased upwards at small N
    assert abs(fit.fd_infinity - 1.0) < 0.05
    assert fit.predict(100) == pytest.approx(fit.fd_infinity + fit.slope / 100)
    with pytest.raises(ValueError, match="two distinct sizes"):
        ev.frechet_distance_bias(feats, ref, sizes=(100, 100))
    with pytest.raises(ValueError, match="each size must be an int >= 5"):
        ev.frechet_distance_bias(feats, ref, sizes=(4, 100))


def test_half_sample_interval_covers_the_mean_at_its_level():
    # for a sample mean the half-sample sd is the standard error: the 95 % interval covers the true mean ~95 %
    hits = 0
    for s in range(200):
        x = torch.randn(200, generator=_gen(s))
        iv = ev.half_sample_interval(lambda idx: float(x[idx].mean()), 200, n_draws=50, generator=_gen(10_000 + s))
        assert iv.low < iv.value < iv.high
        hits += iv.low <= 0.0 <= iv.high
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_wilson_interval_against_its_definition():
    for wins, n in ((0, 10), (3, 10), (50, 100), (100, 100), (7, 40)):
        low, high = ev.wilson_interval(wins, n, digits=None)
        p, z = wins / n, 1.959963984540054
        for q in (low, high):  # the ends solve (p_hat - q)^2 = z^2 q (1 - q) / n
            assert (p - q) ** 2 == pytest.approx(z * z * q * (1 - q) / n, abs=1e-12)
        assert 0.0 <= low <= p <= high <= 1.0
    assert ev.wilson_interval(0, 10)[0] == 0.0 and ev.wilson_interval(0, 10)[1] > 0.2  # not empty at 0 wins
    with pytest.raises(ValueError, match="wins must be an int in"):
        ev.wilson_interval(11, 10)


# ---------------------------------------------------------------- the 2AFC study


def test_pairwise_study_is_blind_records_csv_and_scores(tmp_path):
    a, b = torch.ones(30, 1, 8, 8), -torch.ones(30, 1, 8, 8)
    path = tmp_path / "study.csv"
    study = ev.PairwiseStudy(a, b, "bright", "dark", path, generator=_gen(0), rater="r1")
    sides = set(study.a_on_left)
    assert sides == {True, False}  # both sides used: the rater cannot learn where A is
    while not study.done:
        left, _ = study.pair()
        study.choose("left" if float(left.mean()) > 0 else "right")  # a rater who always prefers the bright one
    r = study.result()
    assert (r["wins"], r["trials"]) == (30, 30) and r["interval"][0] > 0.5
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 30 and {row["preferred"] for row in rows} == {"bright"}
    assert set(rows[0]) == set(ev.PairwiseStudy.FIELDS)
    study2 = ev.PairwiseStudy(a, b, "bright", "dark", path, generator=_gen(1), rater="r2")
    for _ in range(10):
        study2.choose("left")
    pooled = ev.PairwiseStudy.read_csv(path, "bright")
    assert pooled["trials"] == 40 and pooled["raters"] == ["r1", "r2"]
    with pytest.raises(ValueError, match="side must be"):
        study2.choose("up")
    with pytest.raises(ValueError, match="all 30 trials are done"):
        study.choose("left")
    with pytest.raises(ValueError, match="same shape"):
        ev.PairwiseStudy(a, b[:3], "x", "y", tmp_path / "s2.csv")


def test_pairwise_study_widget_clicks_headless(tmp_path):
    pytest.importorskip("ipywidgets")
    study = ev.PairwiseStudy(torch.ones(3, 1, 8, 8), -torch.ones(3, 1, 8, 8), "a", "b", tmp_path / "w.csv",
                             generator=_gen(0))
    box = study.widget()
    for _ in range(3):
        box.buttons[0].click()
    assert study.done and all(b.disabled for b in box.buttons)
    assert len(list(csv.DictReader((tmp_path / "w.csv").open()))) == 3
    assert ev.image_png(torch.zeros(3, 16, 16))[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the convention and the command line


def test_check_images_refuses_wrong_shapes_and_ranges():
    good = _digit_like(10, 0)
    assert ev.check_images(good * 1.2, "digits").abs().max() <= 1.0  # a small overshoot is clamped
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        ev.check_images(torch.zeros(10, 3, 8, 8), "digits")
    with pytest.raises(ValueError, match=r"every value is >= 0"):
        ev.check_images((good + 1) / 2, "digits")
    with pytest.raises(ValueError, match="bytes"):
        ev.check_images(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), "digits")
    with pytest.raises(ValueError, match="range"):
        ev.check_images(good * 100, "digits")
    with pytest.raises(ValueError, match="NaN"):
        ev.check_images(torch.full((10, 1, 8, 8), float("nan")), "digits")
    with pytest.raises(ValueError, match="reference must be one of"):
        ev.check_images(good, "cifar10")


def _untrained_classifier(name, **_):
    torch.manual_seed(0)
    return DigitClassifier().eval()


def test_evaluate_ranks_noise_below_real_digits(monkeypatch):
    from course_lib.data.digits import digits

    monkeypatch.setattr(ev, "feature_network", _untrained_classifier)
    train = digits("train")[0]
    real = train[torch.randperm(len(train), generator=_gen(0))[:200]]
    noisy = (real + 0.5 * torch.randn(real.shape, generator=_gen(1))).clamp(-1, 1)
    r_real = ev.evaluate(real, "digits", n_draws=4, floor_draws=3)
    r_noisy = ev.evaluate(noisy, "digits", n_draws=4, floor_draws=3)
    assert r_noisy.metrics["FD"].value > 3 * r_real.metrics["FD"].value
    assert r_real.metrics["FD"].low < r_real.floors["FD"][0] < r_real.metrics["FD"].high  # real digits sit on the floor
    assert set(r_real.metrics) == {"FD", "KID", "precision", "recall", "classifier score", "class balance TV"}
    assert "FD" in r_real.table()
    with pytest.raises(ValueError, match="more images than features"):
        ev.evaluate(real[:64], "digits")
    with pytest.raises(ValueError, match="at most 1438"):
        ev.evaluate(torch.cat([train, train])[:1500], "digits", n_draws=2, floor_draws=2)


def test_cli_scores_a_file_and_reports_errors(tmp_path, monkeypatch, capsys):
    from course_lib.data.digits import digits

    monkeypatch.setattr(ev, "feature_network", _untrained_classifier)
    path = tmp_path / "samples.pt"
    torch.save({"images": digits("train")[0][:150]}, path)
    out_json = tmp_path / "out.json"
    assert ev.main([str(path), "--n-draws", "3", "--floor-draws", "2", "--json", str(out_json), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "FD" in printed and "real floor" in printed
    saved = json.loads(out_json.read_text())
    assert saved["n"] == 150 and saved["metrics"]["FD"]["low"] <= saved["metrics"]["FD"]["value"]
    torch.save(torch.zeros(20, 3, 8, 8), tmp_path / "bad.pt")
    assert ev.main([str(tmp_path / "bad.pt"), "--quiet"]) == 2
    assert "shape (N, 1, 8, 8)" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert ev.main([str(tmp_path / "junk.pt"), "--quiet"]) == 2
    assert "could not read" in capsys.readouterr().err
    assert ev.main([str(tmp_path / "missing.pt")]) == 2


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "course_lib.evaluate", "--help"], capture_output=True, text=True,
                         check=True)
    assert "--reference" in out.stdout and "convention" in out.stdout


def test_evaluate_is_reproducible_with_or_without_its_cache_and_matches_precision_recall(monkeypatch):
    from course_lib.data.digits import digits
    from course_lib.metrics import precision_recall

    monkeypatch.setattr(ev, "feature_network", _untrained_classifier)
    x = digits("train")[0][:150]
    ev._CACHE.clear()
    first = ev.evaluate(x, "digits", n_draws=3, floor_draws=2, seed=4)
    second = ev.evaluate(x, "digits", n_draws=3, floor_draws=2, seed=4)  # reference and floors from the cache
    ev._CACHE.clear()
    third = ev.evaluate(x, "digits", n_draws=3, floor_draws=2, seed=4)
    assert first.metrics == second.metrics == third.metrics and first.floors == third.floors
    clf = _untrained_classifier("digits")
    ref = ev._reference("digits", clf)
    fns = ev._metric_fns(ref, 3, _gen(0))
    s = ev._scores(clf, x)
    pr = precision_recall(ref["features"], s["features"], k=3)
    assert fns["precision"](s, torch.arange(150)) == pr["precision"] and fns["recall"](s, torch.arange(150)) == pr["recall"]
