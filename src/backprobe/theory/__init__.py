"""What the classic analyses predict for a model's gradients, as pure functions.

``bounds``: Hochreiter's and Pascanu's bounds on gradients through time in recurrent
nets, Pascanu's vanishing/exploding condition per layer, and the exact Jacobian norms
those bounds bound.

``meanfield``: mean-field theory of wide random feed-forward nets (Poole et al. 2016;
Schoenholz et al. 2017): the variance map and its fixed point q*, the per-layer gradient
factor χ1, the depth scale ξ and the edge of chaos.

``jacobian``: singular values of a model's per-example input–output Jacobian and of each
layer's own Jacobian (full SVD or top-k by jvp/vjp subspace iteration), and how close
they are to dynamical isometry (Saxe et al. 2014; Pennington et al. 2017).
"""

from ..errors import FixedPointError, TheoryInputError
from .bounds import (
    RecurrentRegime,
    activation_gamma,
    hochreiter_bound,
    jacobian_norms,
    pascanu_regime,
    recurrent_regimes,
    spectral_norm,
)
from .jacobian import (
    IsometrySummary,
    isometry_summary,
    jacobian_singular_values,
    layer_jacobian_singular_values,
)
from .meanfield import (
    MeanField,
    chi1,
    depth_scale,
    edge_of_chaos_sigma_w,
    fixed_point_q,
    gaussian_expectation,
    mean_field,
    predicted_gradient_ratio,
    q_map,
    trainable_depth,
)

__all__ = [
    "FixedPointError",
    "IsometrySummary",
    "MeanField",
    "RecurrentRegime",
    "TheoryInputError",
    "activation_gamma",
    "chi1",
    "depth_scale",
    "edge_of_chaos_sigma_w",
    "fixed_point_q",
    "gaussian_expectation",
    "hochreiter_bound",
    "isometry_summary",
    "jacobian_norms",
    "jacobian_singular_values",
    "layer_jacobian_singular_values",
    "mean_field",
    "pascanu_regime",
    "predicted_gradient_ratio",
    "q_map",
    "recurrent_regimes",
    "spectral_norm",
    "trainable_depth",
]
