import warnings

import pytest
import torch
from torch import nn

from course_lib import zoo
from course_lib.profiles import get_profile


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


def _fit(model, config, progress):
    with torch.no_grad():
        model.lin.weight.fill_(config["value"])
        model.lin.bias.zero_()
    _fit.calls += 1
    return model, {"trained_value": float(config["value"])}


_fit.calls = 0


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    value = {"v": 3.0}
    recipe = zoo.Recipe("tiny", "classifier", lambda profile: {"value": value["v"], "profile": profile.name},
                        lambda config: Tiny(), _fit, "a test model")
    monkeypatch.setitem(zoo.RECIPES, "tiny", recipe)
    _fit.calls = 0
    return value


def test_trains_once_then_loads_from_the_cache(tiny_recipe, tmp_path):
    quick = get_profile("quick")
    first = zoo.load("tiny", profile=quick, device="cpu", progress=False)
    second = zoo.load("tiny", profile=quick, device="cpu", progress=False)
    assert first.trained_now and not second.trained_now and _fit.calls == 1
    assert float(second.model.lin.weight[0, 0]) == 3.0
    assert second.metrics == {"trained_value": 3.0}
    assert not any(p.suffix == ".tmp" for p in tmp_path.iterdir())  # atomic write left nothing behind
    assert not any(p.requires_grad for p in second.model.parameters())


def test_config_change_gives_a_new_file(tiny_recipe):
    quick = get_profile("quick")
    a = zoo.cache_path("tiny", quick)
    tiny_recipe["v"] = 4.0
    b = zoo.cache_path("tiny", quick)
    assert a != b and a.name.startswith("tiny-")
    assert zoo.cache_path("tiny", get_profile("classroom")) != b  # the profile is part of the key
    assert float(zoo.pretrained("tiny", profile=quick, device="cpu", progress=False).lin.weight[0, 0]) == 4.0


@pytest.mark.parametrize("payload", [b"not a torch file", None])
def test_corrupt_or_unsafe_cache_is_rebuilt(tiny_recipe, payload):
    quick = get_profile("quick")
    path = zoo.cache_path("tiny", quick)
    if payload is None:  # a pickle that would run code: refused by weights_only loading
        torch.save({"name": "tiny", "evil": warnings.WarningMessage}, path)
    else:
        path.write_bytes(payload)
    with pytest.warns(UserWarning, match="unusable cache file"):
        entry = zoo.load("tiny", profile=quick, device="cpu", progress=False)
    assert entry.trained_now and _fit.calls == 1
    assert not zoo.load("tiny", profile=quick, device="cpu", progress=False).trained_now


def test_a_file_for_another_config_is_not_trusted(tiny_recipe):
    quick = get_profile("quick")
    path = zoo.cache_path("tiny", quick)
    torch.save({"name": "tiny", "config": {"value": 99.0, "profile": "quick"}, "state_dict": Tiny().state_dict()}, path)
    with pytest.warns(UserWarning, match="does not match"):
        assert zoo.load("tiny", profile=quick, device="cpu", progress=False).trained_now


def test_unknown_names_and_kinds():
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.pretrained("stable_diffusion")
    with pytest.raises(ValueError, match="not a diffusion denoiser"):
        zoo.pretrained_denoiser("digit_classifier")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_cached_tensor_computes_once_and_rebuilds_corrupt_files(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    config = {"sampler": "ddpm", "steps": 1000, "seed": 0}
    a = zoo.cached_tensor("samples", config, compute)
    b = zoo.cached_tensor("samples", config, compute)
    assert torch.equal(a, b) and len(calls) == 1
    zoo.cached_tensor("samples", {**config, "seed": 1}, compute)  # another config, another file
    assert len(calls) == 2
    path = next(p for p in tmp_path.iterdir() if p.name.startswith("samples-") and zoo._config_key("samples", config) in p.name)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="recomputing"):
        assert torch.equal(zoo.cached_tensor("samples", config, compute), a)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="torch.Tensor"):
        zoo.cached_tensor("other", config, lambda: [1, 2])
    with pytest.raises(ValueError, match="JSON-able"):
        zoo.cached_tensor("other", {"f": compute}, compute)
    with pytest.raises(ValueError, match="file-name-safe"):
        zoo.cached_tensor("a/b", config, compute)


def test_sample_sets_are_keyed_by_the_model_file(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    quick = get_profile("quick")
    config = zoo.SAMPLE_SETS["digits_unet_ddpm1000"][0](quick)
    assert config["model_file"] == zoo.cache_path("digits_unet", quick).name
    assert config["n"] == quick.digits_n_samples
    with pytest.raises(ValueError, match="unknown sample set"):
        zoo.sample_set("cifar_samples")


def test_initial_weights_come_from_the_recipe_seed(monkeypatch, tmp_path):
    """Same recipe, same seed -> the same model, whatever the global RNG state."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    recipe = zoo.Recipe("randinit", "classifier", lambda profile: {"seed": 7}, lambda config: Tiny(),
                        lambda model, config, progress: (model, {}), "random init only")
    monkeypatch.setitem(zoo.RECIPES, "randinit", recipe)
    quick = get_profile("quick")
    torch.manual_seed(1)
    a = zoo.load("randinit", profile=quick, device="cpu", progress=False, rebuild=True).model.lin.weight.clone()
    torch.manual_seed(2)
    b = zoo.load("randinit", profile=quick, device="cpu", progress=False, rebuild=True).model.lin.weight.clone()
    assert torch.equal(a, b)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    zoo.load("randinit", profile=quick, device="cpu", progress=False, rebuild=True)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone


def test_make_lab_builds_every_model_the_chapters_load_in_the_order_they_need_them():
    """ZOO_CHAPTER_ORDER (the Makefile's background build of make lab) follows the chapters' first uses."""
    import re
    from pathlib import Path

    import nbformat

    repo = Path(__file__).resolve().parent.parent
    makefile = (repo / "Makefile").read_text().replace("\\\n", " ")
    queue = re.search(r"^ZOO_CHAPTER_ORDER := (.*)$", makefile, re.M).group(1).split()
    assert set(queue) <= set(zoo.RECIPES) | set(zoo.SAMPLE_SETS) and len(queue) == len(set(queue))
    call = re.compile(r"zoo\.\w+\(\s*f?[\"']([a-z0-9_{}]+)[\"']|(?<![\w.])pretrained\w*\(\s*[\"']([a-z0-9_]+)[\"']")
    first_use = []
    for notebook in sorted((repo / "chapters").glob("[0-9][0-9]_*.ipynb")):
        source = "\n".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")
        toys = re.search(r"TOYS = \(([^)]*)\)", source)
        for match in call.finditer(source):
            name = match.group(1) or match.group(2)
            names = [name.replace("{name}", t.strip(" \"'")) for t in toys.group(1).split(",")] \
                if "{name}" in name and toys else [name]
            first_use += [n for n in names if n in zoo.RECIPES or n in zoo.SAMPLE_SETS]
    first_use = list(dict.fromkeys(first_use))
    assert set(first_use) <= set(queue), f"the chapters load {sorted(set(first_use) - set(queue))}, not in the queue"
    positions = [queue.index(n) for n in first_use]
    assert positions[:2] == sorted(positions[:2]) and queue[:2] == first_use[:2]  # chapter 00's models first
    assert sorted(positions) == positions, f"queue order {queue} differs from first use {first_use}"
