"""ControlNet (course_lib.networks.controlnet): equal to the base at initialisation, the zero
convolutions' gradients, frozen base, conditioning scale, teaching errors, and the samplers unchanged."""

import pytest
import torch

from course_lib.networks.controlnet import ControlNet
from course_lib.networks.unet import UNet, count_parameters
from course_lib.parameterization import Denoiser
from course_lib.samplers import ddim_step, dpm_solver_pp_2m_step, prior_sample, sample
from course_lib.schedules import get_schedule
from course_lib.time_grids import ddpm_grid


def base_unet(num_classes=None):
    torch.manual_seed(0)
    net = UNet(in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
               num_classes=num_classes)
    with torch.no_grad():  # the U-Net's last convolution starts at zero: make the output depend on the input
        net.conv_out.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return net


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, 3, 16, 16, generator=g), torch.rand(4, generator=g),
            (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float())


def test_at_initialisation_the_controlled_output_equals_the_base_exactly():
    base = base_unet(num_classes=5)
    net = ControlNet(base, 1)
    x, t, c = batch()
    y = torch.tensor([0, 1, 2, 5])
    out = base(x, t, y)
    assert out.abs().max() > 1e-3 and torch.equal(net(x, t, control=c, class_labels=y), out)


def test_zero_convolutions_get_a_gradient_and_nothing_upstream_does_at_the_first_step():
    net = ControlNet(base_unet(), 1)
    x, t, c = batch()
    net(x, t, control=c).pow(2).mean().backward()
    zero_grads = [float(z.weight.grad.abs().max()) for z in net.zero_convs]
    assert all(g > 0 for g in zero_grads), zero_grads  # dL/dW = dL/dy * input, the input is not zero
    upstream = [p.grad for name, p in net.named_parameters() if name.startswith(("copy.", "hint.0", "hint.2"))]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in upstream)  # dL/dinput = W^T dL/dy = 0
    assert all(p.grad is None for p in net.base.parameters())  # the base is frozen


def test_frozen_base_trainable_copy_and_parameter_counts():
    base = base_unet()
    net = ControlNet(base, 1)
    trainable = sum(p.numel() for p in net.trainable_parameters())
    assert count_parameters(net.base, trainable_only=True) == 0
    assert trainable == count_parameters(net, trainable_only=True)
    assert 0 < trainable < count_parameters(base)  # the copy has no decoder
    assert all(p.requires_grad for p in net.copy.parameters())


def test_after_training_steps_the_control_changes_the_output_and_scale_zero_is_the_base():
    net = ControlNet(base_unet(), 1)
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.5)
    x, t, c = batch()
    for _ in range(3):
        opt.zero_grad()
        (net(x, t, control=c) - c.expand_as(x)).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        base_out = net.base(x, t)
        assert (net(x, t, control=c) - base_out).abs().max() > 1e-4
        assert (net(x, t, control=c) - net(x, t, control=1 - c)).abs().max() > 1e-5  # it reads the control
        assert torch.equal(net(x, t, control=c, conditioning_scale=0.0), base_out)


def test_teaching_errors():
    net = ControlNet(base_unet(), 1)
    x, t, c = batch()
    with pytest.raises(ValueError, match="control must have shape"):
        net(x, t, control=c[:, :, :8, :8])
    with pytest.raises(ValueError, match="control must have shape"):
        net(x, t, control=torch.cat([c, c], 1))
    with pytest.raises(ValueError, match="needs a control image"):
        net(x, t)
    with pytest.raises(ValueError, match="conditioning_scale"):
        net(x, t, control=c, conditioning_scale=-1.0)
    with pytest.raises(ValueError, match="course UNet"):
        ControlNet(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="control_channels must be a positive int, got 0"):
        ControlNet(base_unet(), 0)


@pytest.mark.parametrize("step", [ddim_step, dpm_solver_pp_2m_step])
def test_the_samplers_run_a_controlled_model_unchanged(step):
    net = ControlNet(base_unet(), 1)
    schedule = get_schedule("ddpm_linear")
    _, _, c = batch()
    x_T = prior_sample(schedule, (4, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        controlled = sample(Denoiser(net, schedule, control=c), x_T, ddpm_grid(1000, 5), step)
        plain = sample(Denoiser(net.base, schedule), x_T, ddpm_grid(1000, 5), step)
    assert torch.equal(controlled, plain)  # at initialisation: the base's samples exactly


def test_a_latent_base_takes_the_control_at_image_resolution():
    # Stable Diffusion's layout: x_t is a 4 x 4 latent, the control a 16 x 16 mask; stride-2 convolutions
    # in the control encoder bring it to the latent grid.
    base = UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=())
    with torch.no_grad():
        for p in base.conv_out.parameters():
            p.normal_(generator=torch.Generator().manual_seed(0))
    net = ControlNet(base, 1, control_downsample=4)
    g = torch.Generator().manual_seed(3)
    z, t, mask = torch.randn(2, 4, 4, 4, generator=g), torch.rand(2, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    assert torch.equal(net(z, t, control=mask), base(z, t))
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\).*control_downsample 4"):
        net(z, t, control=mask[:, :, :4, :4])
    with pytest.raises(ValueError, match="power of 2"):
        ControlNet(base, 1, control_downsample=3)
    strided = [m for m in net.hint if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 2


def test_classifier_free_guidance_runs_a_controlnet_and_the_control_serves_both_branches():
    from course_lib.conditioning.guidance import ClassifierFreeGuidance

    net = ControlNet(base_unet(num_classes=5), 1)
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.5)
    x, t, c = batch()
    y = torch.tensor([0, 1, 2, 3])
    for _ in range(3):  # move the zero convolutions so that the control matters
        opt.zero_grad()
        (net(x, t, control=c, class_labels=y) - c.expand_as(x)).pow(2).mean().backward()
        opt.step()
    schedule = get_schedule("ddpm_linear")
    guided = ClassifierFreeGuidance(Denoiser(net, schedule, control=c), y, 3.0)
    with torch.no_grad():
        out = guided(x, 0.5)
        # by hand: the conditional and the unconditional branch, each with the same control
        cond = Denoiser(net, schedule, control=c, class_labels=y)(x, 0.5)
        uncond = Denoiser(net, schedule, control=c, class_labels=torch.full_like(y, 5))(x, 0.5)
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="control must have shape"):
        net(torch.cat([x, x[:2]]), torch.cat([t, t[:2]]), control=c)  # 6 rows are not copies of 4


def test_mask_iou_and_segment():
    from course_lib.data.shapes import segment, shapes
    from course_lib.metrics import mask_iou

    real = shapes(32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(segment(real.images), real.masks)
    assert torch.equal(mask_iou(real.masks, real.masks), torch.ones(32))
    shifted = torch.roll(real.masks, 3, dims=-1)
    iou = mask_iou(real.masks, shifted)
    inter = (real.masks * shifted).flatten(1).sum(1)
    union = real.masks.flatten(1).sum(1) + shifted.flatten(1).sum(1) - inter
    torch.testing.assert_close(iou, inter / union)
    assert float(mask_iou(torch.zeros(1, 4), torch.zeros(1, 4))) == 1.0  # two empty masks agree
    assert float(mask_iou(torch.zeros(1, 4), torch.ones(1, 4))) == 0.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        mask_iou(real.masks * 0.5, real.masks)
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(real.masks, real.masks[:, :, :8])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        segment(real.masks)
    with pytest.raises(ValueError, match="threshold"):
        segment(real.images, threshold=2.0)


def test_the_zoo_controlnet_starts_at_its_base_and_trains_only_the_copy(tmp_path, monkeypatch):
    """The recipe on the quick profile with a fresh cache: the trainable copy is a copy of the *trained*
    encoder, the base is the parent's weights unchanged, and the adherence curve is measured."""
    from course_lib import zoo
    from course_lib.profiles import get_profile

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    quick = get_profile("quick")
    entry = zoo.load("shapes_controlnet", profile=quick, device="cpu", progress=False)
    parent = zoo.load("shapes_latent_unet", profile=quick, device="cpu", progress=False)
    for (name, p), q in zip(parent.model.named_parameters(), entry.model.base.parameters()):
        assert torch.equal(p, q), name  # the frozen base never moved
    curve = entry.metrics["adherence_curve"]
    assert curve["step"][0] == 0 and curve["step"][-1] == entry.config["steps"]
    assert all(0.0 <= v <= 1.0 for v in curve["iou"])
    assert entry.metrics["trainable_parameters"] == sum(p.numel() for p in entry.model.trainable_parameters())
    assert all(not p.requires_grad for p in entry.model.base.parameters())
