"""Pure diffusion maths: one noise convention, schedules, parameterisations, samplers, guidance and losses.

Convention everywhere (EDM, Karras et al. 2022): ``x = x0 + sigma * noise``; see :mod:`.convention`.
Typical use::

    denoiser = Denoiser(network, prediction="edm")
    sigmas = get_sigmas("karras", 30)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = initial_noise((len(seeds), 4, 32, 32), sigmas[0], gens)
    denoise = classifier_free_guidance(denoiser, cond, uncond, guidance_scale=5.0)
    images = sample("dpmpp_2m", denoise, x, sigmas, generators=gens)
"""

from .convention import (
    add_noise,
    alpha_bar_to_sigma,
    broadcast,
    from_vp,
    noise_level,
    sigma_to_alpha_bar,
    to_vp,
)
from .guidance import Conditioning, classifier_free_guidance, conditional_denoiser
from .hierarchical import HierarchicalResult, HierarchyLevel, LevelStepInfo, default_level_plan, sample_hierarchical
from .losses import (
    condition_dropout,
    diffusion_loss,
    edm_loss,
    min_snr_weight,
    sample_sigmas_logit_normal,
    sample_sigmas_lognormal,
    sample_sigmas_vp,
)
from .parameterization import (
    PREDICTIONS,
    Denoiser,
    Scalings,
    convert,
    eps_to_x0,
    expand_sigma,
    get_scalings,
    score_to_x0,
    v_to_x0,
    x0_to_eps,
    x0_to_score,
    x0_to_v,
)
from .samplers import (
    SAMPLERS,
    DenoiseFn,
    StepInfo,
    ancestral_step,
    initial_noise,
    randn_per_sample,
    sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_flow_heun,
    sample_heun,
    sample_unipc,
)
from .schedules import (
    SCHEDULES,
    exponential_sigmas,
    flow_sigmas,
    get_sigmas,
    karras_sigmas,
    vp_cosine_alpha_bar,
    vp_cosine_sigmas,
    vp_linear_alpha_bar,
    vp_linear_sigmas,
)

__all__ = [
    "PREDICTIONS", "SAMPLERS", "SCHEDULES",
    "Conditioning", "DenoiseFn", "Denoiser", "HierarchicalResult", "HierarchyLevel", "LevelStepInfo", "Scalings",
    "StepInfo", "default_level_plan", "sample_hierarchical",
    "add_noise", "alpha_bar_to_sigma", "ancestral_step", "broadcast", "classifier_free_guidance",
    "condition_dropout", "conditional_denoiser", "convert", "diffusion_loss", "edm_loss", "eps_to_x0",
    "expand_sigma", "exponential_sigmas", "flow_sigmas", "from_vp", "get_scalings", "get_sigmas", "initial_noise",
    "karras_sigmas", "min_snr_weight", "noise_level", "randn_per_sample", "sample", "sample_ddim",
    "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_euler", "sample_euler_ancestral", "sample_flow_heun", "sample_heun",
    "sample_sigmas_logit_normal", "sample_sigmas_lognormal", "sample_sigmas_vp", "sample_unipc", "score_to_x0", "sigma_to_alpha_bar", "to_vp",
    "v_to_x0", "vp_cosine_alpha_bar", "vp_cosine_sigmas", "vp_linear_alpha_bar", "vp_linear_sigmas",
    "x0_to_eps", "x0_to_score", "x0_to_v",
]
