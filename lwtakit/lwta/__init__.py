"""Stochastic local winner-takes-all (LWTA) activations (DISCOVER, Panousis et al., NeurIPS 2023).

- :mod:`lwtakit.lwta.kernels`: the competition's sampling and straight-through gradient (eqs. 1-2) as
  autograd Functions (U = 2 eager / fused, any U);
- :mod:`lwtakit.lwta.triton`: the U = 2 kernels in Triton (CUDA only, imported on first use);
- :mod:`lwtakit.lwta.layer`: the ``LWTA`` module and ``LWTAOptions``, the one object that carries its options;
- :mod:`lwtakit.lwta.network`: helpers over all LWTA layers of a model (temperature, inference mode, KL, MC);
- :mod:`lwtakit.lwta.temperature`: temperature schedules over epochs.
"""

from lwtakit.lwta.layer import DENSE, INFERENCE_MODES, LWTA, TEMPERATURE_ON, LWTAOptions
from lwtakit.lwta.network import lwta_inference, lwta_layers, mc_predict, set_inference, set_temperature, total_kl

__all__ = ["DENSE", "INFERENCE_MODES", "LWTA", "LWTAOptions", "TEMPERATURE_ON", "lwta_inference", "lwta_layers",
           "mc_predict", "set_inference", "set_temperature", "total_kl"]
