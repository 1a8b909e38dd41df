"""Flux / Chroma flow-matching recipe (lora_studio.models.flow_matching): the sigma samplers' distributions with a fixed
seed, the scheduler table against diffusers', signs of the forward process and target, prediction types, loss
weights, the sampling schedule and Euler sampler, and BFL's latent packing and position ids."""

import math

import pytest
import torch

from lora_studio.models import flow_matching as fm

DRAWS = 20000
LATENT = 128  # a 1024 x 1024 image: 128 x 128 latent, 64 * 64 = 4096 packed tokens
FLUX_DEV_SHIFT = math.exp(1.15)  # 3.1582: e^mu at 4096 packed tokens


def draw(recipe, seed=0, count=DRAWS, size=LATENT):
    return fm.sample_sigmas(recipe, count, size, size, "cpu", generator=torch.Generator().manual_seed(seed))


def mean_and_deciles(sigmas):
    quantiles = torch.quantile(sigmas.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return [sigmas.double().mean().item(), *quantiles.tolist()]


def shifted(value, shift):
    return shift * value / (1 + (shift - 1) * value)


# Measured with seed 0 and 20000 draws at a 128 x 128 latent: mean, 10 %, 50 %, 90 % quantiles.
MEASURED = {
    "uniform": ({}, [0.5017, 0.0991, 0.5025, 0.9009]),
    "sigmoid": ({}, [0.4974, 0.2141, 0.4970, 0.7798]),
    "shift": ({"discrete_flow_shift": 3.1582}, [0.7205, 0.4625, 0.7573, 0.9179]),
    "flux_shift": ({}, [0.7205, 0.4625, 0.7573, 0.9179]),
    "sigma": ({"discrete_flow_shift": 3.0}, [0.6753, 0.2498, 0.7485, 0.9647]),
}


@pytest.mark.parametrize("mode", sorted(MEASURED))
def test_each_sampler_draws_its_measured_distribution(mode):
    options, expected = MEASURED[mode]
    sigmas = draw(fm.FlowRecipe(timestep_sampling=mode, **options))
    assert sigmas.shape == (DRAWS,) and sigmas.dtype == torch.float32
    assert bool(((sigmas > 0) & (sigmas <= 1)).all())
    assert mean_and_deciles(sigmas) == pytest.approx(expected, abs=2e-3)


def test_samplers_match_their_formulas():
    uniform = draw(fm.FlowRecipe(timestep_sampling="uniform"))
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert uniform.median().item() == pytest.approx(0.5, abs=0.01)
    sigmoid = draw(fm.FlowRecipe(timestep_sampling="sigmoid"))
    assert sigmoid.median().item() == pytest.approx(0.5, abs=0.01)  # logit-normal around 0
    shift = draw(fm.FlowRecipe(timestep_sampling="shift", discrete_flow_shift=3.1582))
    assert shift.median().item() == pytest.approx(shifted(0.5, 3.1582), abs=0.01)  # 0.7595
    # flux_shift at 4096 packed tokens is shift with s = e^1.15, draw for draw
    flux_shift = draw(fm.FlowRecipe(timestep_sampling="flux_shift"))
    same_shift = draw(fm.FlowRecipe(timestep_sampling="shift", discrete_flow_shift=FLUX_DEV_SHIFT))
    assert torch.allclose(flux_shift, same_shift, atol=1e-6)
    assert flux_shift.median().item() == pytest.approx(shifted(0.5, FLUX_DEV_SHIFT), abs=0.01)


def test_flux_shift_follows_the_packed_token_count():
    assert fm.packed_token_count(128, 128) == 4096 and fm.packed_token_count(32, 32) == 256
    assert fm.shift_mu(4096) == pytest.approx(1.15) and fm.shift_mu(256) == pytest.approx(0.5)
    small = draw(fm.FlowRecipe(timestep_sampling="flux_shift"), size=32)  # 256 px image: mu 0.5
    assert torch.allclose(small, draw(fm.FlowRecipe(timestep_sampling="shift", discrete_flow_shift=math.exp(0.5))),
                          atol=1e-6)


def test_sigma_sampler_draws_from_the_diffusers_scheduler_table():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    table = scheduler.sigmas[:1000].float()
    assert torch.equal(fm.scheduler_sigma_table(3.0), table)
    sigmas = draw(fm.FlowRecipe(timestep_sampling="sigma", discrete_flow_shift=3.0))
    assert bool(torch.isin(sigmas, table).all())
    assert table.mean().item() == pytest.approx(0.6765, abs=1e-4)
    assert sigmas.mean().item() == pytest.approx(table.mean().item(), abs=0.01)


def test_logit_normal_and_mode_densities():
    base = fm.FlowRecipe(timestep_sampling="sigma", weighting_scheme="logit_normal")
    moved = fm.FlowRecipe(timestep_sampling="sigma", weighting_scheme="logit_normal", logit_mean=1.0)
    u0 = fm.density_draws(base, DRAWS, torch.Generator().manual_seed(0))
    u1 = fm.density_draws(moved, DRAWS, torch.Generator().manual_seed(0))
    assert u0.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u1.mean().item() == pytest.approx(0.70, abs=0.01)  # E[sigmoid(N(1, 1))] ~ 0.697: the density moves up
    # the table descends (index 0 is sigma 1), so a larger u means less noise: measured sigma means 0.7164 -> 0.5236
    assert draw(base).mean().item() == pytest.approx(0.7164, abs=2e-3)
    assert draw(moved).mean().item() == pytest.approx(0.5236, abs=2e-3)
    # mode_scale 1.29 gathers u in the middle: unshifted 10-90 % spread 0.609 against 0.80 for uniform
    mode = draw(fm.FlowRecipe(timestep_sampling="sigma", weighting_scheme="mode", discrete_flow_shift=1.0))
    flat = draw(fm.FlowRecipe(timestep_sampling="sigma", weighting_scheme="mode", mode_scale=0.0,
                              discrete_flow_shift=1.0))
    assert mean_and_deciles(mode) == pytest.approx([0.5013, 0.1960, 0.5010, 0.8050], abs=2e-3)
    assert mean_and_deciles(flat)[1:] == pytest.approx([0.1, 0.5, 0.9], abs=0.01)


def test_timestep_range_narrows_every_sampler():
    for mode in fm.TIMESTEP_SAMPLINGS:
        sigmas = draw(fm.FlowRecipe(timestep_sampling=mode, min_timestep=200, max_timestep=600), count=2000)
        assert 0.2 <= sigmas.min().item() and sigmas.max().item() <= 0.6, mode
    uniform = draw(fm.FlowRecipe(timestep_sampling="uniform", min_timestep=200, max_timestep=600))
    assert uniform.mean().item() == pytest.approx(0.4, abs=0.01)
    table = fm.scheduler_sigma_table(3.0)
    assert bool(torch.isin(draw(fm.FlowRecipe(min_timestep=200, max_timestep=600)), table).all())
    fixed = draw(fm.FlowRecipe(timestep_sampling="sigmoid", min_timestep=500, max_timestep=500), count=10)
    assert torch.allclose(fixed, torch.full((10,), 0.5))
    with pytest.raises(ValueError):
        fm.FlowRecipe(min_timestep=600, max_timestep=200)
    with pytest.raises(ValueError):
        draw(fm.FlowRecipe(min_timestep=0, max_timestep=2))  # no table sigma below 0.00299 at shift 3
    with pytest.raises(ValueError):
        fm.FlowRecipe(timestep_sampling="logit")


def test_a_fixed_seed_repeats_and_the_device_argument_is_honoured():
    recipe = fm.FlowRecipe(timestep_sampling="sigmoid")
    assert torch.equal(draw(recipe, seed=3, count=8), draw(recipe, seed=3, count=8))
    assert not torch.equal(draw(recipe, seed=3, count=8), draw(recipe, seed=4, count=8))
    assert draw(recipe, count=2).device.type == "cpu"
    assert fm.timesteps_from_sigmas(torch.tensor([0.25, 1.0])).tolist() == [250.0, 1000.0]


def test_forward_process_target_and_one_euler_step_have_the_right_signs():
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(fm.noisy_latents(x0, eps, torch.zeros(2)), x0)
    assert torch.equal(fm.noisy_latents(x0, eps, torch.ones(2)), eps)
    mixed = fm.noisy_latents(x0, eps, torch.tensor([0.25, 0.75]))
    assert torch.allclose(mixed[0], 0.75 * x0[0] + 0.25 * eps[0])
    assert torch.allclose(mixed[1], 0.25 * x0[1] + 0.75 * eps[1])
    target = fm.velocity_target(x0, eps)
    assert torch.equal(target, eps - x0)
    exact_model = fm.velocity_target(x0, eps)
    pred, weighting = fm.apply_prediction_type("raw", exact_model, mixed, torch.tensor([0.25, 0.75]))
    assert weighting is None and torch.nn.functional.mse_loss(pred, target).item() == 0.0
    recovered = fm.euler_sample(lambda x, s: exact_model, eps, [1.0, 0.0])
    assert torch.allclose(recovered, x0, atol=1e-6)


def test_ip_noise_gamma_perturbs_the_input_but_not_the_target():
    x0, eps, sigmas = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([0.5])
    plain = fm.model_input(fm.FlowRecipe(), x0, eps, sigmas)
    assert torch.equal(plain, torch.full((1, 1, 2, 2), 0.5))
    recipe = fm.FlowRecipe(ip_noise_gamma=0.1)
    perturbed = fm.model_input(recipe, x0, eps, sigmas, generator=torch.Generator().manual_seed(1))
    xi = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(perturbed, 0.5 * (eps + 0.1 * xi))
    assert torch.equal(fm.velocity_target(x0, eps), eps)  # the target keeps the plain noise
    random_strength = fm.FlowRecipe(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True)
    strength = fm.ip_noise_strength(random_strength, torch.Generator().manual_seed(2))
    assert strength == pytest.approx(0.1 * torch.rand(1, generator=torch.Generator().manual_seed(2)).item())
    assert 0.0 <= strength < 0.1 and fm.ip_noise_strength(fm.FlowRecipe()) == 0.0


def test_prediction_types_and_loss_weights():
    pred, noisy, sigmas = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), 3.0), torch.tensor([0.5, 0.25])
    raw, raw_weight = fm.apply_prediction_type("raw", pred, noisy, sigmas)
    assert torch.equal(raw, pred) and raw_weight is None
    additive, additive_weight = fm.apply_prediction_type("additive", pred, noisy, sigmas)
    assert additive.flatten().tolist() == [5.0, 5.0] and additive_weight is None
    scaled, weight = fm.apply_prediction_type("sigma_scaled", pred, noisy, sigmas)
    assert scaled.flatten().tolist() == [2.0, 2.5] and weight.tolist() == [1.0, 1.0]  # 2 * -0.5 + 3, 2 * -0.25 + 3
    _, weight = fm.apply_prediction_type("sigma_scaled", pred, noisy, sigmas, weighting_scheme="sigma_sqrt")
    assert weight.tolist() == [4.0, 16.0]
    assert fm.loss_weighting("sigma_sqrt", sigmas).tolist() == [4.0, 16.0]
    cosmap = fm.loss_weighting("cosmap", torch.tensor([0.5, 0.0]))
    assert cosmap.tolist() == pytest.approx([4 / math.pi, 2 / math.pi])  # 2 / (pi * 0.5), 2 / (pi * 1)
    for scheme in ("uniform", "none", "logit_normal", "mode"):
        assert fm.loss_weighting(scheme, sigmas).tolist() == [1.0, 1.0]


def test_sampling_schedule():
    dev = fm.sampling_sigmas(4, 4096, shift=True)
    schnell = fm.sampling_sigmas(4, 4096, shift=False)
    assert schnell == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert dev[0] == 1.0 and dev[-1] == 0.0 and len(dev) == 5
    assert all(a > b for a, b in zip(dev, dev[1:]))
    bfl_time_shift = math.exp(1.15) / (math.exp(1.15) + (1 / 0.5 - 1))  # mu 1.15 at 1024 x 1024
    assert dev[2] == pytest.approx(bfl_time_shift, abs=1e-6) and dev[2] == pytest.approx(0.7595, abs=1e-4)
    assert fm.sampling_sigmas(28, 1024, shift=True)[14] == pytest.approx(shifted(0.5, math.exp(fm.shift_mu(1024))))


def test_euler_sampler_guidance_and_steps():
    calls = []

    def positive(x, sigma):
        calls.append(sigma.tolist())
        return torch.full_like(x, 1.0)

    def negative(x, sigma):
        return torch.full_like(x, -1.0)

    start = torch.zeros(2, 1, 2, 2)
    # v = -1 + 4 * (1 - -1) = 7; x = 0 + (0.5 - 1) * 7 + (0 - 0.5) * 7 = -7
    guided = fm.euler_sample(positive, start, [1.0, 0.5, 0.0], cfg_scale=4.0, negative_velocity_fn=negative)
    assert torch.allclose(guided, torch.full_like(start, -7.0))
    assert calls == [[1.0, 1.0], [0.5, 0.5]]
    unguided = fm.euler_sample(positive, start, [1.0, 0.5, 0.0], cfg_scale=1.0, negative_velocity_fn=negative)
    assert torch.allclose(unguided, torch.full_like(start, -1.0))


def test_validation_sigmas_are_fixed_and_evenly_spread():
    assert fm.validation_sigmas().tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert fm.validation_sigmas(3, 100, 900).tolist() == pytest.approx([0.3, 0.5, 0.7])
    assert torch.equal(fm.validation_sigmas(7), fm.validation_sigmas(7))


def test_pack_and_unpack_follow_bfl_element_order():
    latent = torch.arange(16.0).reshape(1, 1, 4, 4)
    # rows 0 1 2 3 / 4 5 6 7 / 8 9 10 11 / 12 13 14 15: patch (0,0) = 0 1 4 5, patch (0,1) = 2 3 6 7, ...
    packed = fm.pack_latents(latent)
    assert packed.shape == (1, 4, 4)
    assert packed[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    two_channels = torch.stack([latent[0, 0], 100 + latent[0, 0]])[None]
    assert fm.pack_latents(two_channels)[0, 0].tolist() == [0, 1, 4, 5, 100, 101, 104, 105]  # channel first
    torch.manual_seed(0)
    latents = torch.randn(2, 16, 6, 10)
    packed = fm.pack_latents(latents)
    assert packed.shape == (2, 15, 64)
    assert torch.equal(fm.unpack_latents(packed, 6, 10), latents)
    with pytest.raises(ValueError):
        fm.pack_latents(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError):
        fm.unpack_latents(packed, 8, 10)


def test_image_and_text_ids():
    ids = fm.image_ids(2, 4, 6)
    assert ids.shape == (2, 6, 3) and ids.dtype == torch.float32
    assert ids[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert torch.equal(ids[0], ids[1])
    text = fm.text_ids(2, 5)
    assert text.shape == (2, 5, 3) and not text.any()
