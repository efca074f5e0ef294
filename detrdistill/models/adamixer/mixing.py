"""AdaMixer's adaptive mixing: channel mixing then spatial mixing, both with weights generated from the query.

For each query and group g, the sampled features ``x_g`` [P_in, C/G] are mixed

    channel: ``x = relu(LN(x_g @ M_g))``,   M_g [C/G, C/G]    (LN over the whole [P_in, C/G] matrix)
    spatial: ``x = relu(LN(S_g @ x))``,     S_g [P_out, P_in] (LN over the whole [P_out, C/G] matrix)

where ``[M_g, S_g] = Linear(query)`` (one generator for all groups, zero-initialised weight as in AdaMixer); the
G mixed matrices are flattened, projected back to the query width and added to the query (residual).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaptiveMixing"]


class AdaptiveMixing(nn.Module):
    """in_dim C (sampled channels), query_dim D, in_points P_in, out_points P_out, n_groups G."""

    def __init__(self, in_dim: int, query_dim: int, in_points: int, out_points: int, n_groups: int):
        super().__init__()
        if in_dim % n_groups:
            raise ValueError(f"AdaptiveMixing: in_dim ({in_dim}) must be a multiple of n_groups ({n_groups})")
        self.in_dim, self.query_dim = in_dim, query_dim
        self.in_points, self.out_points, self.n_groups = in_points, out_points, n_groups
        self.group_dim = in_dim // n_groups
        self.channel_params = self.group_dim * self.group_dim
        self.spatial_params = in_points * out_points
        self.parameter_generator = nn.Linear(query_dim, n_groups * (self.channel_params + self.spatial_params))
        self.out_proj = nn.Linear(n_groups * out_points * self.group_dim, query_dim)

    def reset_adamixer_parameters(self) -> None:
        """AdaMixer starts with zero generated weights (only the generator's bias mixes at first)."""
        nn.init.zeros_(self.parameter_generator.weight)

    def mixing_weights(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, N, D] -> channel weights M [B, N, G, C/G, C/G] and spatial weights S [B, N, G, P_out, P_in]."""
        B, N, _ = query.shape
        params = self.parameter_generator(query).view(B, N, self.n_groups, -1)
        m, s = params.split([self.channel_params, self.spatial_params], dim=-1)
        return (m.reshape(B, N, self.n_groups, self.group_dim, self.group_dim),
                s.reshape(B, N, self.n_groups, self.out_points, self.in_points))

    def forward(self, sampled: Tensor, query: Tensor) -> Tensor:
        """sampled [B, N, G, P_in, C/G], query [B, N, D] -> updated query [B, N, D] (query + mixed)."""
        B, N, G, P, Cg = sampled.shape
        if (G, P, Cg) != (self.n_groups, self.in_points, self.group_dim):
            raise ValueError(f"AdaptiveMixing: sampled features {tuple(sampled.shape)} do not match "
                             f"(G={self.n_groups}, P_in={self.in_points}, C/G={self.group_dim})")
        m, s = self.mixing_weights(query)
        x = sampled @ m                                            # channel mixing   [B, N, G, P_in, C/G]
        x = F.relu(F.layer_norm(x, (self.in_points, self.group_dim)))  # constant shapes: traceable (ONNX)
        x = s @ x                                                  # spatial mixing   [B, N, G, P_out, C/G]
        x = F.relu(F.layer_norm(x, (self.out_points, self.group_dim)))
        return query + self.out_proj(x.reshape(B, N, -1))
