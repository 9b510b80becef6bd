"""Chapter 15's prompt machinery: guidance for any conditioning, the image-prompt adapter, attention maps,
and reading a caption back from an image."""

import copy

import pytest
import torch

from course_lib.conditioning import ClassifierFreeGuidance, PromptGuidance
from course_lib.data.shapes import read_colour, read_size, shapes
from course_lib.networks.ip_adapter import DecoupledCrossAttention, IPAdapter
from course_lib.networks.unet import CrossAttention, UNet, attention_weights, record_cross_attention
from course_lib.parameterization import Denoiser
from course_lib.samplers import ddim_step, dpm_solver_pp_2m_step, prior_sample, sample
from course_lib.schedules import get_schedule
from course_lib.text import NULL_CAPTION, TextEncoder, caption_ids, caption_index, caption_tokens, null_ids
from course_lib.time_grids import ddpm_grid


def _text_unet(seed=0, **kw):
    torch.manual_seed(seed)
    net = UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=(0, 1), context_dim=8, **kw)
    for p in net.parameters():  # conv_out starts at zero; give every weight a value so outputs differ
        torch.nn.init.normal_(p, 0, 0.05)
    return net.eval()


def test_reading_a_caption_back_from_rendered_shapes_is_exact():
    for seed in range(3):
        batch = shapes(2000, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(read_colour(batch.images), batch.color_ids)
        assert torch.equal(read_size(batch.images, batch.labels), batch.size_ids)
    blank = -torch.ones(2, 3, 16, 16)
    assert read_colour(blank).tolist() == [-1, -1]  # no foreground: no colour
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        read_size(batch.images[:2], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        read_colour(torch.zeros(2, 1, 16, 16))


def test_caption_table_rows_and_the_empty_caption():
    ids = caption_ids()
    assert ids.shape == (49, 6) and ids[NULL_CAPTION].tolist() == [1, 0, 0, 0, 0, 0]
    assert torch.equal(null_ids(3), ids[NULL_CAPTION:].expand(3, 6))
    labels, colours, sizes = torch.tensor([2, 3]), torch.tensor([3, 5]), torch.tensor([1, 0])
    assert caption_index(labels, colours, sizes).tolist() == [(2 * 6 + 3) * 2 + 1, (3 * 6 + 5) * 2 + 0]
    torch.manual_seed(0)
    encoder = TextEncoder(dim=16).eval()
    table = caption_tokens(encoder)
    assert table.shape == (49, 6, 16) and not table.requires_grad
    torch.testing.assert_close(table[7:9], encoder(ids[7:9]))


def test_prompt_guidance_with_labels_is_classifier_free_guidance():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=(), num_classes=10)
    torch.nn.init.normal_(net.conv_out.weight, 0, 0.05)
    denoiser = Denoiser(net, get_schedule("ddpm_linear"))
    labels = torch.tensor([3, 7, 1])
    x = torch.randn(3, 1, 8, 8)
    cfg = ClassifierFreeGuidance(denoiser, labels, 3.0)
    prompt = PromptGuidance(denoiser, {"class_labels": labels}, {"class_labels": torch.full_like(labels, 10)}, 3.0)
    assert torch.equal(cfg(x, 0.4), prompt(x, 0.4))
    times = ddpm_grid(1000, 8)
    assert torch.equal(sample(cfg, x, times, ddim_step), sample(prompt, x, times, ddim_step))


def test_prompt_guidance_on_a_context_and_its_errors():
    net = _text_unet()
    denoiser = Denoiser(net, get_schedule("ddpm_linear"))
    text, empty = torch.randn(2, 3, 8), torch.zeros(2, 3, 8)
    x = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        cond, uncond = denoiser(x, torch.full((2,), 0.5), context=text), denoiser(x, torch.full((2,), 0.5), context=empty)
        guided = PromptGuidance(denoiser, {"context": text}, {"context": empty}, 2.5)(x, 0.5)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same keys"):
        PromptGuidance(denoiser, {"context": text}, {"class_labels": torch.zeros(2)}, 2.0)
    with pytest.raises(ValueError, match="same shape"):
        PromptGuidance(denoiser, {"context": text}, {"context": torch.zeros(2, 4, 8)}, 2.0)
    with pytest.raises(ValueError, match="non-empty dicts"):
        PromptGuidance(denoiser, {}, {}, 2.0)
    with pytest.raises(ValueError, match="batch of 3 but the prompts have 2"):
        PromptGuidance(denoiser, {"context": text}, {"context": empty}, 2.0)(torch.randn(3, 4, 4, 4), 0.5)
    with pytest.raises(ValueError, match="class_labels must be a non-empty"):
        ClassifierFreeGuidance(Denoiser(UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=(),
                                             num_classes=10), get_schedule("ddpm_linear")), None, 2.0)


def test_recorded_attention_weights_are_the_layers_own():
    net = _text_unet()
    x, t, context = torch.randn(2, 4, 4, 4), torch.rand(2), torch.randn(2, 5, 8)
    seen = {}
    layer = next(m for m in net.modules() if type(m) is CrossAttention)
    handle = layer.register_forward_pre_hook(lambda m, inputs: seen.update(x=inputs[0]))
    with torch.no_grad(), record_cross_attention(net) as calls:
        net(x, t, context=context)
    handle.remove()
    cross_layers = [m for m in net.modules() if type(m) is CrossAttention]
    assert len(calls) == len(cross_layers) >= 3
    for call in calls:
        torch.testing.assert_close(call["weights"].sum(-1), torch.ones(call["weights"].shape[:-1]))
    first = next(c for c in calls if c["weights"].shape[2] == 16)
    h = layer.norm(seen["x"]).flatten(2).transpose(1, 2)
    q, k = layer.to_q(h), layer.to_k(context)
    d = q.shape[-1] // layer.num_heads
    qh = q.reshape(2, 16, layer.num_heads, d).transpose(1, 2)
    kh = k.reshape(2, 5, layer.num_heads, d).transpose(1, 2)
    torch.testing.assert_close(first["weights"], torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, -1))
    torch.testing.assert_close(attention_weights(q, k, layer.num_heads), first["weights"])
    with torch.no_grad():
        net(x, t, context=context)
    assert len(calls) == len(cross_layers)  # the hooks are gone after the block


def test_ip_adapter_at_scale_zero_is_the_base_exactly_and_starts_from_the_text_projections():
    base = _text_unet()
    adapter = IPAdapter(copy.deepcopy(base), image_dim=5, num_tokens=2)
    layers = [m for m in adapter.modules() if isinstance(m, DecoupledCrossAttention)]
    assert len(layers) == len([m for m in base.modules() if type(m) is CrossAttention])
    for layer in layers:
        assert torch.equal(layer.to_k_ip.weight, layer.base.to_k.weight) and layer.to_k_ip.weight is not layer.base.to_k.weight
        assert torch.equal(layer.to_v_ip.bias, layer.base.to_v.bias)
    trainable = {n for n, p in adapter.named_parameters() if p.requires_grad}
    assert trainable and all("_ip." in n or n.startswith("image_proj.") for n in trainable)
    assert sum(p.numel() for p in adapter.adapter_parameters()) == sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    schedule = get_schedule("ddpm_linear")
    x_T = prior_sample(schedule, (3, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    text, image = torch.randn(3, 6, 8), torch.randn(3, 5)
    adapter.set_scale(0.0)
    with torch.no_grad():
        for step, n in ((ddim_step, 10), (dpm_solver_pp_2m_step, 6)):
            plain = sample(Denoiser(base, schedule, context=text), x_T, ddpm_grid(1000, n), step)
            adapted = sample(Denoiser(adapter, schedule, context=text, image_embeds=image), x_T, ddpm_grid(1000, n), step)
            assert torch.equal(plain, adapted)
        adapter.set_scale(1.0)
        t = torch.full((3,), 0.5)
        assert not torch.equal(adapter(x_T, t, context=text, image_embeds=image), base(x_T, t, context=text))
        # no image prompt is the zero embedding
        assert torch.equal(adapter(x_T, t, context=text), adapter(x_T, t, context=text, image_embeds=torch.zeros(3, 5)))


def test_decoupled_attention_by_hand():
    base = _text_unet()
    adapter = IPAdapter(copy.deepcopy(base), image_dim=5, num_tokens=2)
    layer = next(m for m in adapter.modules() if isinstance(m, DecoupledCrossAttention))
    torch.nn.init.normal_(layer.to_k_ip.weight, 0, 0.3)
    layer.scale = 0.7
    x, ctx = torch.randn(2, layer.base.norm.num_channels, 4, 4), torch.randn(2, 6, 8)
    text, image = ctx[:, :4], ctx[:, 4:]
    b = layer.base
    h = b.norm(x).flatten(2).transpose(1, 2)
    q = b.to_q(h)

    def attend(k, v):
        w = attention_weights(q, k, b.num_heads)
        d = q.shape[-1] // b.num_heads
        return (w @ v.reshape(2, -1, b.num_heads, d).transpose(1, 2)).transpose(1, 2).reshape(q.shape)

    z = attend(b.to_k(text), b.to_v(text)) + 0.7 * attend(layer.to_k_ip(image), layer.to_v_ip(image))
    expected = x + b.to_out(z).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(layer(x, ctx), expected)


def test_ip_adapter_teaching_errors():
    with pytest.raises(ValueError, match="cross-attention"):
        IPAdapter(UNet(in_channels=4, base_channels=16, channel_mults=(1,), attention_levels=(0,)), image_dim=5)
    adapter = IPAdapter(_text_unet(), image_dim=5, num_tokens=2)
    with pytest.raises(ValueError, match=r"image_embeds must be \(2, 5\)"):
        adapter(torch.randn(2, 4, 4, 4), torch.rand(2), context=torch.randn(2, 6, 8), image_embeds=torch.randn(2, 4))
    with pytest.raises(ValueError, match="needs the text tokens"):
        adapter(torch.randn(2, 4, 4, 4), torch.rand(2), image_embeds=torch.randn(2, 5))
    with pytest.raises(ValueError, match=">= 0"):
        adapter.set_scale(-1.0)
    with pytest.raises(ValueError, match="must be a CrossAttention"):
        DecoupledCrossAttention(torch.nn.Linear(2, 2), 2)
