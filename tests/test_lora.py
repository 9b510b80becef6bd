"""LoRA adapters (course_lib.networks.lora): zero start, parameter counts, merge/unmerge, save/load,
mixing, rsLoRA scaling, teaching errors, and parity with Hugging Face peft."""

import math

import pytest
import torch
from torch import nn

from course_lib.networks.lora import (LoRALayer, add_lora, load_lora, lora_parameter_count, lora_parameters,
                                      lora_state_dict, merge_lora, save_lora, set_adapters, unmerge_lora)
from course_lib.networks.unet import UNet

ATTENTION = ["to_q", "to_k", "to_v", "to_out"]


def small_unet(seed=0):
    torch.manual_seed(seed)
    net = UNet(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))
    with torch.no_grad():  # the U-Net's last convolution starts at zero: make the output depend on the input
        net.conv_out.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 100))
    return net


def randomise_b(model, seed=1, adapter="default"):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALayer) and adapter in layer.config:
                layer.lora_B[adapter].copy_(torch.randn(layer.lora_B[adapter].shape, generator=g) * 0.1)


def inputs(seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g)


def test_zero_b_gives_the_base_output_exactly_and_freezes_the_base():
    base, adapted = small_unet(), small_unet()
    x, t = inputs()
    names = add_lora(adapted, 4, ATTENTION + ["conv1", "conv2"], generator=torch.Generator().manual_seed(0))
    assert len(names) > 4
    out = base(x, t)
    assert out.abs().max() > 1e-3 and torch.equal(out, adapted(x, t))
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(adapted)}


@pytest.mark.parametrize("rank", [1, 2, 4, 8, 16])
def test_parameter_count_is_r_times_d_in_plus_d_out(rank):
    model = small_unet()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and n.rsplit(".", 1)[-1] in ATTENTION + ["conv1"]}
    expected = sum(lora_parameter_count(m, rank) for m in layers.values())
    add_lora(model, rank, ATTENTION + ["conv1"])
    assert sum(p.numel() for p in lora_parameters(model)) == expected
    linear = nn.Linear(32, 32)
    assert lora_parameter_count(linear, rank) == rank * (32 + 32)
    conv = nn.Conv2d(16, 32, 3)
    assert lora_parameter_count(conv, rank) == rank * (16 * 9 + 32)


def test_merge_equals_the_adapted_output_and_unmerge_restores_the_base():
    model = small_unet()
    add_lora(model, 4, ATTENTION + ["conv1"], generator=torch.Generator().manual_seed(0))
    randomise_b(model)
    x, t = inputs()
    before = {n: p.clone() for n, p in model.named_parameters() if n.endswith("base.weight")}
    with torch.no_grad():
        adapted = model(x, t)
        assert (adapted - small_unet()(x, t)).abs().max() > 1e-4  # the adapter changes the output
        merge_lora(model)
        merged = model(x, t)
        unmerge_lora(model)
        again = model(x, t)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert (merged - adapted).abs().max() < 1e-4
    for n, p in model.named_parameters():
        if n.endswith("base.weight"):
            torch.testing.assert_close(p, before[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(again, adapted, rtol=1e-5, atol=1e-5)


def test_merging_in_bfloat16_drifts_far_more_than_in_float32():
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        layer = nn.Linear(64, 64).to(dtype)
        model = nn.Sequential(layer)
        add_lora(model, 8, ["0"], generator=torch.Generator().manual_seed(0))
        randomise_b(model)
        original = model[0].base.weight.detach().clone().float()
        merge_lora(model)
        unmerge_lora(model)
        errors[dtype] = float((model[0].base.weight.float() - original).abs().max())
    assert errors[torch.float32] < 1e-6 and errors[torch.bfloat16] > 100 * max(errors[torch.float32], 1e-9)


def test_adapter_saved_and_loaded_on_its_own(tmp_path):
    model = small_unet()
    add_lora(model, 2, ATTENTION, generator=torch.Generator().manual_seed(0))
    randomise_b(model)
    path = save_lora(model, tmp_path / "style.pt")
    state = lora_state_dict(model)
    n_adapter = sum(v.numel() for v in state["tensors"].values())
    assert n_adapter == sum(p.numel() for p in lora_parameters(model))
    fresh = small_unet()
    assert sorted(load_lora(fresh, path)) == state["targets"]
    x, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t), model(x, t))
    with pytest.raises(ValueError, match="not a course LoRA adapter"):
        torch.save({"weights": 1}, tmp_path / "bad.pt")
        load_lora(small_unet(), tmp_path / "bad.pt")


def test_two_adapters_mix_linearly_and_rslora_scales_by_sqrt_rank():
    model = small_unet()
    add_lora(model, 2, ATTENTION, adapter="a", generator=torch.Generator().manual_seed(0))
    add_lora(model, 4, ATTENTION, adapter="b", rslora=True, alpha=4.0, generator=torch.Generator().manual_seed(1))
    randomise_b(model, 1, "a")
    randomise_b(model, 2, "b")
    x, t = inputs()
    with torch.no_grad():
        set_adapters(model, {})
        base = model(x, t)
        set_adapters(model, {"a": 1.0})
        out_a = model(x, t)
        set_adapters(model, {"b": 1.0})
        out_b = model(x, t)
        set_adapters(model, {"a": 0.3, "b": 0.7})
        mixed = model(x, t)
    delta = lambda out: out - base
    # attention layers are linear in each adapter's update only to first order; on one layer exactly:
    layer = next(m for m in model.modules() if isinstance(m, LoRALayer))
    assert layer.scaling("b") == pytest.approx(4.0 / math.sqrt(4)) and layer.scaling("a") == pytest.approx(1.0)
    h = torch.randn(3, layer.base.in_features)
    layer.mix = {"a": 0.3, "b": 0.7}
    lin_mix = layer(h)
    layer.mix = {"a": 1.0}
    lin_a = layer(h)
    layer.mix = {"b": 1.0}
    lin_b = layer(h)
    layer.mix = {}
    lin_0 = layer(h)
    torch.testing.assert_close(lin_mix - lin_0, 0.3 * (lin_a - lin_0) + 0.7 * (lin_b - lin_0), rtol=1e-5, atol=1e-6)
    assert delta(out_a).abs().max() > 1e-4 and delta(out_b).abs().max() > 1e-4  # both adapters act
    assert (mixed - out_a).abs().max() > 1e-5 and (mixed - out_b).abs().max() > 1e-5  # the mix is neither


def test_teaching_errors():
    model = small_unet()
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        add_lora(model, 0, ATTENTION)
    with pytest.raises(ValueError, match="at most min"):
        add_lora(small_unet(), 1000, ATTENTION)
    with pytest.raises(ValueError, match="no layer matches"):
        add_lora(small_unet(), 2, ["attention_projection"])
    m = small_unet()
    add_lora(m, 2, ATTENTION)
    with pytest.raises(ValueError, match="unknown adapter"):
        set_adapters(m, {"style": 1.0})
    with pytest.raises(ValueError, match="already exists"):
        add_lora(m, 2, ATTENTION)
    with pytest.raises(ValueError, match="nn.Linear and nn.Conv2d"):
        LoRALayer(nn.GroupNorm(2, 4))


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("rslora", [False, True])
def test_parity_with_peft(kind, rslora):
    peft = pytest.importorskip("peft", reason="peft is in the test extras")  # installed by make test
    torch.manual_seed(0)
    layer = nn.Linear(12, 7) if kind == "linear" else nn.Conv2d(5, 6, 3, padding=1)
    ours = nn.Sequential(layer)
    theirs = nn.Sequential(type(layer)(*((12, 7) if kind == "linear" else (5, 6, 3)), **({} if kind == "linear" else {"padding": 1})))
    theirs.load_state_dict(ours.state_dict())
    add_lora(ours, 3, ["0"], alpha=6.0, rslora=rslora, generator=torch.Generator().manual_seed(0))
    randomise_b(ours)
    cfg = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], use_rslora=rslora, lora_dropout=0.0)
    theirs = peft.get_peft_model(theirs, cfg)
    peft_layer = theirs.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(ours[0].lora_A["default"])
        peft_layer.lora_B["default"].weight.copy_(ours[0].lora_B["default"])
    x = torch.randn(4, 12) if kind == "linear" else torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
        assert peft_layer.scaling["default"] == pytest.approx(ours[0].scaling("default"))
        torch.testing.assert_close(ours[0].delta_weight("default"), peft_layer.get_delta_weight("default"))
