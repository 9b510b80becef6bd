"""Tests of course_lib.networks: time embedding, TimeMLP and UNet (shapes, hooks, errors)."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from course_lib.networks.embeddings import (
    TimeEmbedding,
    resolve_class_labels,
    sinusoidal_embedding,
)
from course_lib.networks.mlp import TimeMLP
from course_lib.networks.unet import (
    CrossAttention,
    ResBlock,
    SelfAttention,
    UNet,
    count_parameters,
    multi_head_attention,
    parameter_table,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _perturb_output(net: nn.Module, layer: nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised output layer random weights, so inputs reach the output."""
    g = _gen(seed)
    with torch.no_grad():
        layer.weight.copy_(0.1 * torch.randn(layer.weight.shape, generator=g))
        layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-4


# ---- sinusoidal embedding -------------------------------------------------------------------


def test_sinusoidal_embedding_matches_the_formula():
    t = torch.tensor([0.0, 0.25, 1.0])
    dim, max_period, scale = 6, 10000.0, 1000.0
    emb = sinusoidal_embedding(t, dim)
    assert emb.shape == (3, dim)
    half = dim // 2
    for b in range(3):
        for i in range(half):
            angle = scale * t[b].item() * max_period ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.sin(angle), abs=1e-4)
            assert emb[b, half + i].item() == pytest.approx(math.cos(angle), abs=1e-4)


def test_sinusoidal_embedding_separates_nearby_times():
    t = torch.linspace(0, 1, 1001)
    emb = sinusoidal_embedding(t, 64)
    gaps = (emb[1:] - emb[:-1]).norm(dim=1)
    assert gaps.min().item() > 0.1  # DDPM's neighbouring integer steps stay distinguishable
    assert torch.allclose(emb.norm(dim=1), torch.full((1001,), math.sqrt(32.0)), atol=1e-4)


def test_sinusoidal_embedding_keeps_float64():
    assert sinusoidal_embedding(torch.zeros(2, dtype=torch.float64), 4).dtype == torch.float64


@pytest.mark.parametrize(
    ("t", "dim", "match"),
    [
        (torch.zeros(2, 1), 4, r"t must have shape \(B,\), got shape \(2, 1\)"),
        ([0.0, 1.0], 4, "t must be a torch.Tensor"),
        (torch.zeros(2), 5, "dim must be a positive even int, got 5"),
        (torch.zeros(2), 0, "dim must be a positive even int, got 0"),
    ],
)
def test_sinusoidal_embedding_rejects_bad_input(t, dim, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_embedding(t, dim)


def test_sinusoidal_embedding_rejects_bad_period_and_scale():
    with pytest.raises(ValueError, match="max_period must be > 1"):
        sinusoidal_embedding(torch.zeros(2), 4, max_period=1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        sinusoidal_embedding(torch.zeros(2), 4, scale=0.0)


def test_time_embedding_shape_and_errors():
    assert TimeEmbedding(8, 16)(torch.rand(3)).shape == (3, 16)
    with pytest.raises(ValueError, match="sinusoidal_dim must be a positive even int"):
        TimeEmbedding(7, 16)
    with pytest.raises(ValueError, match="out_dim must be a positive int"):
        TimeEmbedding(8, 0)


def test_resolve_class_labels():
    assert resolve_class_labels(None, 2, 10).tolist() == [10, 10]
    assert resolve_class_labels(torch.tensor([0, 10], dtype=torch.int32), 2, 10).dtype == torch.long
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2,\), got \(3,\)"):
        resolve_class_labels(torch.tensor([0, 1, 2]), 2, 10)
    with pytest.raises(ValueError, match="class_labels must be an integer tensor"):
        resolve_class_labels(torch.tensor([0.0, 1.0]), 2, 10)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\] \(10 is the null label\)"):
        resolve_class_labels(torch.tensor([0, 11]), 2, 10)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\]"):
        resolve_class_labels(torch.tensor([-1, 0]), 2, 10)


# ---- TimeMLP --------------------------------------------------------------------------------


def test_time_mlp_default_size_and_shapes():
    torch.manual_seed(0)
    net = TimeMLP()
    assert count_parameters(net) == 75010
    x = torch.randn(7, 2)
    out = net(x, torch.rand(7))
    assert out.shape == (7, 2)
    assert torch.equal(out, torch.zeros(7, 2))  # zero-initialised output layer
    assert TimeMLP(dim=3, hidden=16, depth=1)(torch.randn(4, 3), torch.rand(4)).shape == (4, 3)


def test_time_mlp_uses_t_and_labels():
    torch.manual_seed(0)
    net = TimeMLP(num_classes=3)
    _perturb_output(net, net.output)
    x = torch.randn(5, 2, generator=_gen())
    t = torch.full((5,), 0.3)
    out_null = net(x, t)
    assert torch.equal(out_null, net(x, t, torch.full((5,), 3)))  # None == null label
    assert _differs(out_null, net(x, t, torch.zeros(5, dtype=torch.long)))
    assert _differs(out_null, net(x, torch.full((5,), 0.7)))


def test_time_mlp_errors():
    net = TimeMLP()
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2\), got \(4, 3\)"):
        net(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\) to match x_t, got \(4, 1\)"):
        net(torch.randn(4, 2), torch.rand(4, 1))
    with pytest.raises(ValueError, match="class_labels were given but this TimeMLP is unconditional"):
        net(torch.randn(4, 2), torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\]"):
        TimeMLP(num_classes=2)(torch.randn(4, 2), torch.rand(4), torch.full((4,), 3))
    with pytest.raises(ValueError, match="time_dim must be even"):
        TimeMLP(time_dim=3)
    with pytest.raises(ValueError, match="depth must be a positive int, got 0"):
        TimeMLP(depth=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        TimeMLP(num_classes=0)


# ---- attention ------------------------------------------------------------------------------


def test_multi_head_attention_matches_torch_reference():
    g = _gen(1)
    q, k, v = (torch.randn(2, n, 8, generator=g) for n in (5, 7, 7))
    ours = multi_head_attention(q, k, v, num_heads=2)

    def heads(x):
        return x.reshape(2, x.shape[1], 2, 4).transpose(1, 2)

    ref = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    ref = ref.transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(ours, ref)
    with pytest.raises(ValueError, match="num_heads=3 must divide the channels, got 8"):
        multi_head_attention(q, k, v, num_heads=3)


def test_attention_blocks_keep_shape():
    x = torch.randn(2, 16, 3, 5)
    assert SelfAttention(16, num_heads=4, groups=8)(x).shape == x.shape
    assert CrossAttention(16, context_dim=6)(x, torch.randn(2, 4, 6)).shape == x.shape
    with pytest.raises(ValueError, match="num_heads=3 must divide the channels of every attention block"):
        SelfAttention(16, num_heads=3)
    with pytest.raises(ValueError, match="groups=5 must divide"):
        CrossAttention(16, context_dim=4, groups=5)


def test_res_block_shapes_and_errors():
    emb = torch.randn(2, 12)
    assert ResBlock(8, 16, 12)(torch.randn(2, 8, 4, 4), emb).shape == (2, 16, 4, 4)
    assert ResBlock(8, 8, 12, scale_shift=False)(torch.randn(2, 8, 4, 4), emb).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="groups=8 must divide .* ResBlock input has 12 channels"):
        ResBlock(12, 16, 4)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        ResBlock(8, 8, 4, dropout=1.0)


# ---- UNet shapes and sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "kwargs"),
    [
        (1, 8, {}),
        (1, 16, dict(channel_mults=(1, 2, 2), attention_levels=(2,))),
        (1, 28, dict(channel_mults=(1, 2, 2), attention_levels=(2,))),
        (1, 28, dict(base_channels=16, channel_mults=(1, 1, 2, 2), attention_levels=(3,))),
        (3, 16, dict(channel_mults=(1, 2, 2), attention_levels=(1,))),
        (3, 8, dict(base_channels=16, num_res_blocks=2, attention_levels=(0, 1))),
    ],
)
def test_unet_output_shape(channels, size, kwargs):
    torch.manual_seed(0)
    net = UNet(in_channels=channels, **kwargs)
    out = net(torch.randn(2, channels, size, size), torch.rand(2))
    assert out.shape == (2, channels, size, size)


def test_unet_odd_and_rectangular_sizes_round_trip():
    torch.manual_seed(0)
    net = UNet(base_channels=16, channel_mults=(1, 2, 2, 2), attention_levels=(3,))
    assert net.residual_shapes(28, 28)[-1] == (32, 4, 4)  # 28 -> 14 -> 7 -> 4
    _perturb_output(net, net.conv_out)
    x = torch.randn(2, 1, 7, 9, generator=_gen())
    assert net(x, torch.rand(2)).shape == (2, 1, 7, 9)


def test_unet_out_channels():
    net = UNet(in_channels=3, out_channels=6, base_channels=16)
    assert net(torch.randn(1, 3, 8, 8), torch.rand(1)).shape == (1, 6, 8, 8)


def test_unet_output_starts_at_zero():
    net = UNet()
    assert torch.equal(net(torch.randn(3, 1, 8, 8), torch.rand(3)), torch.zeros(3, 1, 8, 8))


def test_digits_config_parameter_count():
    n = count_parameters(UNet(in_channels=1, base_channels=32, channel_mults=(1, 2),
                              num_res_blocks=1, attention_levels=(1,)))
    assert n == 755009
    assert 500_000 <= n <= 1_000_000


def test_parameter_table_adds_up_and_names_blocks():
    net = UNet(num_classes=10)
    table = parameter_table(net)
    names = [name for name, _ in table]
    assert names == ["time_embed", "class_embed", "conv_in", "down.0", "down.1", "mid",
                     "up.0", "up.1", "norm_out", "conv_out"]
    assert sum(count for _, count in table) == count_parameters(net)
    assert dict(table)["class_embed"] == 11 * net.emb_dim  # 10 classes + the null label
    assert dict(table)["conv_out"] == 32 * 1 * 9 + 1


def test_count_parameters_trainable_only():
    net = UNet(base_channels=16)
    total = count_parameters(net)
    net.down.requires_grad_(False)
    frozen = count_parameters(net.down)
    assert count_parameters(net, trainable_only=True) == total - frozen
    assert sum(c for _, c in parameter_table(net, trainable_only=True)) == total - frozen
    with pytest.raises(ValueError, match="module must be a torch.nn.Module"):
        count_parameters([1, 2])
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        parameter_table("unet")


def test_unet_weights_are_plain_layers_for_lora():
    net = UNet(num_classes=10, context_dim=8)
    allowed = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.Embedding)
    for name, module in net.named_modules():
        if list(module.parameters(recurse=False)):
            assert isinstance(module, allowed), f"{name} is a {type(module).__name__}"


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = UNet(base_channels=16, num_classes=4, context_dim=8, dropout=0.1)
    _perturb_output(net, net.conv_out)
    g = _gen()
    x = torch.randn(3, 1, 8, 8, generator=g)
    out = net(x, torch.rand(3, generator=g), torch.tensor([0, 1, 4]),
              context=torch.randn(3, 2, 8, generator=g))
    out.pow(2).sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert unused == []


# ---- UNet conditioning hooks ----------------------------------------------------------------


@pytest.fixture
def cond_net():
    torch.manual_seed(0)
    net = UNet(base_channels=16, num_classes=10, context_dim=6).eval()
    _perturb_output(net, net.conv_out)
    return net


@pytest.fixture
def inputs():
    g = _gen(3)
    return torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g)


def test_unet_uses_time(cond_net, inputs):
    x, t = inputs
    assert _differs(cond_net(x, t), cond_net(x, 1.0 - t))


def test_class_labels_and_null_label(cond_net, inputs):
    x, t = inputs
    out_none = cond_net(x, t)
    out_null = cond_net(x, t, torch.full((4,), cond_net.null_label))
    torch.testing.assert_close(out_none, out_null)  # None means the null label
    out_3 = cond_net(x, t, torch.full((4,), 3))
    out_5 = cond_net(x, t, torch.full((4,), 5))
    assert _differs(out_3, out_null) and _differs(out_3, out_5)
    assert cond_net.null_label == 10
    assert cond_net.class_embed.num_embeddings == 11


def test_context_changes_output(cond_net, inputs):
    x, t = inputs
    g = _gen(4)
    ctx_a = torch.randn(4, 3, 6, generator=g)
    ctx_b = torch.randn(4, 3, 6, generator=g)
    out_a, out_b, out_none = cond_net(x, t, context=ctx_a), cond_net(x, t, context=ctx_b), cond_net(x, t)
    assert _differs(out_a, out_b) and _differs(out_a, out_none)
    # a context of a different length L works too
    assert cond_net(x, t, context=torch.randn(4, 1, 6)).shape == x.shape


def test_residual_shapes_match_the_encoder(cond_net, inputs):
    x, t = inputs
    emb = cond_net.embed(t)
    h, skips = cond_net.encode(x, emb)
    actual = [tuple(s.shape[1:]) for s in skips] + [tuple(h.shape[1:])]
    assert actual == cond_net.residual_shapes(8, 8)
    assert cond_net.skip_channels() == [s[0] for s in actual[:-1]]
    torch.testing.assert_close(cond_net.decode(h, skips, emb), cond_net(x, t))


def test_extra_residuals_add_to_skips_and_middle(cond_net, inputs):
    x, t = inputs
    shapes = cond_net.residual_shapes(8, 8)
    zeros = [torch.zeros(4, *s) for s in shapes]
    base = cond_net(x, t)
    torch.testing.assert_close(cond_net(x, t, extra_residuals=zeros), base)  # zero conv at init
    g = _gen(5)
    for i in range(len(shapes)):  # each residual, alone, reaches the output
        residuals = list(zeros)
        residuals[i] = torch.randn(4, *shapes[i], generator=g)
        assert _differs(cond_net(x, t, extra_residuals=residuals), base), f"residual {i} unused"


def test_extra_residuals_equal_manual_addition(cond_net, inputs):
    x, t = inputs
    g = _gen(6)
    residuals = [torch.randn(4, *s, generator=g) for s in cond_net.residual_shapes(8, 8)]
    emb = cond_net.embed(t)
    h, skips = cond_net.encode(x, emb)
    manual = cond_net.decode(h + residuals[-1], [s + r for s, r in zip(skips, residuals)], emb)
    torch.testing.assert_close(cond_net(x, t, extra_residuals=residuals), manual)


def test_encode_hint_changes_features(cond_net, inputs):
    x, t = inputs
    emb = cond_net.embed(t)
    h0, _ = cond_net.encode(x, emb)
    h1, _ = cond_net.encode(x, emb, hint=torch.ones(4, 16, 8, 8))
    assert _differs(h0, h1)
    with pytest.raises(ValueError, match=r"hint must have shape \(4, 16, 8, 8\), got \(4, 16, 4, 4\)"):
        cond_net.encode(x, emb, hint=torch.ones(4, 16, 4, 4))


# ---- UNet errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(groups=5), "groups=5 must divide the number of channels of every GroupNorm"),
        (dict(base_channels=12), "groups=8 must divide .* has 12 channels"),
        (dict(attention_levels=(2,)), r"attention_levels must be level indices in \[0, 1\]"),
        (dict(num_heads=3), "num_heads=3 must divide the channels of every attention level"),
        (dict(channel_mults=()), "channel_mults must be a non-empty sequence of positive ints"),
        (dict(channel_mults=(1, 0)), "channel_mults must be a non-empty sequence"),
        (dict(base_channels=15, groups=1), "base_channels must be even"),
        (dict(num_res_blocks=0), "num_res_blocks must be a positive int, got 0"),
        (dict(in_channels=0), "in_channels must be a positive int, got 0"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(num_classes=0), "num_classes must be a positive int, got 0"),
        (dict(context_dim=8, attention_levels=(), mid_attention=False),
         "context_dim is set but there is no attention block"),
    ],
)
def test_unet_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_unet_forward_errors(cond_net, inputs):
    x, t = inputs
    plain = UNet(base_channels=16)
    cases = [
        (lambda: plain(x[0], t), r"x_t must have shape \(B, C, H, W\), got \(1, 8, 8\)"),
        (lambda: plain(x.repeat(1, 3, 1, 1), t), "x_t must have 1 channels .*got 3"),
        (lambda: plain(x, t[:3]), r"t must have shape \(4,\) to match x_t, got \(3,\)"),
        (lambda: plain(x, 0.5), r"t must have shape \(4,\) to match x_t, got float"),
        (lambda: plain(x, t, torch.zeros(4, dtype=torch.long)),
         "class_labels were given but this UNet is unconditional"),
        (lambda: plain(x, t, context=torch.randn(4, 2, 6)),
         r"context was given but this UNet has no cross-attention \(context_dim=None\)"),
        (lambda: cond_net(x, t, torch.full((4,), 11)), r"class_labels must lie in \[0, 10\]"),
        (lambda: cond_net(x, t, torch.zeros(4)), "class_labels must be an integer tensor"),
        (lambda: cond_net(x, t, torch.zeros(3, dtype=torch.long)),
         r"class_labels must have shape \(4,\), got \(3,\)"),
        (lambda: cond_net(x, t, context=torch.randn(4, 2, 5)),
         r"context must have shape \(4, L, 6\) with L >= 1, got \(4, 2, 5\)"),
        (lambda: cond_net(x, t, context=torch.randn(4, 6)),
         r"context must have shape \(4, L, 6\)"),
        (lambda: cond_net(x, t, extra_residuals=[torch.zeros(4, 16, 8, 8)]),
         r"extra_residuals must be a list of 5 tensors \(4 skips \+ the middle block\), got 1"),
        (lambda: cond_net(x, t, extra_residuals=torch.zeros(5)),
         "extra_residuals must be a list of 5 tensors"),
        (lambda: cond_net(x, t, extra_residuals=[torch.zeros(4, *s) for s in [(16, 8, 8)] * 5]),
         r"extra_residuals\[2\] must have shape \(4, 16, 4, 4\), got \(4, 16, 8, 8\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
