"""Warm-start a wider hyperprior from a narrower one without changing what it computes.

A high-rate model needs more transform channels (N) and latent channels (M) than the shipped
ladder (the literature's N=192, M=320 above about 1 bpp), but training one from scratch
costs far more steps than a session has. Widening the shipped weights instead (Net2Net's
idea, Chen et al. 2016) keeps every old channel exactly where it was and lets the new ones
start from the model's own initialisers, with every path *from* a new channel *into* an old
one set to zero. So the widened model reconstructs exactly as the narrow one at first (the
new latent channels cost rate, nothing else) and training grows the new channels in.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pillow_kae.ops.parametrizers import REPARAM_OFFSET
from pillow_kae.zoo.weights import weights_to_arrays

# Where the old channels sit in a wider axis, for each kind of channel axis.
_Layout = str  # "image" | "hidden" | "latent" | "hyper" | "params" | "subpixel"


def _positions(layout: _Layout, old: dict[str, int], new: dict[str, int]) -> np.ndarray:
    """Indices in the wide axis of the narrow axis's channels, in order."""
    if layout == "image":
        return np.arange(3)
    if layout in ("hidden", "latent", "hyper"):
        return np.arange(old[layout])
    if layout == "params":  # h_s output: means then log-scales, M each
        m0, m = old["latent"], new["latent"]
        return np.concatenate([np.arange(m0), m + np.arange(m0)])
    if layout == "subpixel":  # depth-to-space input: (row * 2 + col) * N + c
        n0, n = old["hidden"], new["hidden"]
        return (np.arange(4)[:, None] * n + np.arange(n0)[None, :]).ravel()
    raise ValueError(layout)


def _axes(arch: dict[str, int]) -> dict[str, int]:
    """Channels of each widenable kind of axis, from a hyperprior's arch."""
    return {
        "hidden": arch["channels"],
        "latent": arch["latent_channels"],
        "hyper": arch["hyper_channels"],
    }


# (input layout, output layout) of every convolution, by its weights' key prefix.
_CONVS: dict[str, tuple[_Layout, _Layout]] = {
    "g_a/conv0": ("image", "hidden"),
    "g_a/conv1": ("hidden", "hidden"),
    "g_a/conv2": ("hidden", "hidden"),
    "g_a/conv3": ("hidden", "latent"),
    "g_s/deconv0": ("latent", "hidden"),
    "g_s/deconv1": ("hidden", "hidden"),
    "g_s/deconv2": ("hidden", "hidden"),
    "g_s/deconv3": ("hidden", "image"),
    "h_a/conv0": ("latent", "hidden"),
    "h_a/conv1": ("hidden", "hidden"),
    "h_a/conv2": ("hidden", "hyper"),
    "h_s/up0/conv": ("hyper", "subpixel"),
    "h_s/up1/conv": ("hidden", "subpixel"),
    "h_s/conv2": ("hidden", "params"),
}


def widen_arrays(
    narrow: Mapping[str, np.ndarray], model: object, old: dict[str, int], new: dict[str, int]
) -> dict[str, np.ndarray]:
    """The wide ``model``'s weights, holding the ``narrow`` model's (architectures ``old`` and
    ``new``: channels/latent_channels/hyper_channels) so that the old channels compute as before.
    """
    dims = {side: _axes(arch) for side, arch in (("old", old), ("new", new))}
    if dims["old"]["hyper"] != dims["new"]["hyper"]:
        raise ValueError("widening keeps the hyper-latent (and its entropy model) as it is")
    if any(dims["new"][k] < dims["old"][k] for k in ("hidden", "latent")):
        raise ValueError(f"cannot narrow {old} to {new}")
    wide = weights_to_arrays(model, compact=False)
    out = dict(wide)
    for key, value in narrow.items():
        if key not in wide:
            continue  # the coding tables, which export rebuilds
        target = wide[key].copy()
        prefix, name = key.rsplit("/", 1)
        if prefix in _CONVS:
            layout_in, layout_out = _CONVS[prefix]
            rows = _positions(layout_in, dims["old"], dims["new"])
            cols = _positions(layout_out, dims["old"], dims["new"])
            if name == "bias":
                target[cols] = value
            else:
                # a deconv's kernel is (kh, kw, out, in): view it as (kh, kw, in, out)
                transposed = prefix.startswith("g_s/")
                kernel = target.transpose(0, 1, 3, 2) if transposed else target
                old_value = value.transpose(0, 1, 3, 2) if transposed else value
                new_rows = np.setdiff1d(np.arange(kernel.shape[2]), rows)
                kernel[:, :, new_rows[:, None], cols[None, :]] = 0.0  # new in -> old out
                kernel[:, :, rows[:, None], cols[None, :]] = old_value
        elif name in ("beta", "gamma"):  # GDN over the hidden channels
            idx = _positions("hidden", dims["old"], dims["new"])
            if name == "beta":
                target[idx] = value
            else:
                # norm_j = sum_i x_i^2 gamma_ij: a new i must not touch an old j
                new_rows = np.setdiff1d(np.arange(target.shape[0]), idx)
                target[new_rows[:, None], idx[None, :]] = REPARAM_OFFSET  # effective zero
                target[idx[:, None], idx[None, :]] = value
        elif target.shape == value.shape:
            target = value  # the entropy bottleneck of z
        else:
            raise ValueError(f"{key}: no rule to widen {value.shape} to {target.shape}")
        out[key] = target.astype(wide[key].dtype)
    return out


def arch_of(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The channel counts of a hyperprior's weights ({} for weights of another kind)."""
    if "g_a/conv0/kernel" not in arrays:
        return {}
    return {
        "channels": int(arrays["g_a/conv0/kernel"].shape[3]),
        "latent_channels": int(arrays["g_a/conv3/kernel"].shape[3]),
        "hyper_channels": int(arrays["h_a/conv2/kernel"].shape[3]),
    }
