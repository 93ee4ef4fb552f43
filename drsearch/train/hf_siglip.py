"""Hugging Face SigLIP vision towers (e.g. MedSigLIP's ``model.safetensors``) -> timm ViT.

MedSigLIP ships in the ``transformers`` layout: separate q/k/v projections, a position
embedding table, and a multi-head attention pooling head (``head.probe`` + an
``nn.MultiheadAttention``). timm's SigLIP ViTs (``vit_*_siglip_*`` without ``gap``) have the
same computation with fused ``qkv`` and an ``AttentionPoolLatent`` (``attn_pool``), so the
tensors map one to one; the text tower is dropped. A position table for another patch grid is
resampled by the generic loader (``model.load_local_weights``).
"""

from __future__ import annotations

import torch

_MARKER = "embeddings.patch_embedding.weight"
_PREFIXES = ("vision_model.", "")


def is_hf_siglip(state: dict[str, torch.Tensor]) -> bool:
    """True for a transformers SigLIP (vision) state dict."""
    return any(f"{prefix}{_MARKER}" in state for prefix in _PREFIXES)


def convert_hf_siglip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and fuse a transformers SigLIP vision tower into timm's ViT keys."""
    prefix = next(p for p in _PREFIXES if f"{p}{_MARKER}" in state)
    src = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out = {
        "patch_embed.proj.weight": src["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": src["embeddings.patch_embedding.bias"],
        "pos_embed": src["embeddings.position_embedding.weight"].unsqueeze(0),
        "norm.weight": src["post_layernorm.weight"],
        "norm.bias": src["post_layernorm.bias"],
    }
    n_layers = 1 + max(int(k.split(".")[2]) for k in src if k.startswith("encoder.layers."))
    for i in range(n_layers):
        out |= _block(src, f"encoder.layers.{i}.", f"blocks.{i}.")
    if "head.probe" in src:
        out |= _pool_head(src)
    return out


def _block(src: dict[str, torch.Tensor], s: str, d: str) -> dict[str, torch.Tensor]:
    attn = f"{s}self_attn."
    return {
        f"{d}norm1.weight": src[f"{s}layer_norm1.weight"],
        f"{d}norm1.bias": src[f"{s}layer_norm1.bias"],
        f"{d}attn.qkv.weight": torch.cat([src[f"{attn}{x}_proj.weight"] for x in "qkv"]),
        f"{d}attn.qkv.bias": torch.cat([src[f"{attn}{x}_proj.bias"] for x in "qkv"]),
        f"{d}attn.proj.weight": src[f"{attn}out_proj.weight"],
        f"{d}attn.proj.bias": src[f"{attn}out_proj.bias"],
        f"{d}norm2.weight": src[f"{s}layer_norm2.weight"],
        f"{d}norm2.bias": src[f"{s}layer_norm2.bias"],
        f"{d}mlp.fc1.weight": src[f"{s}mlp.fc1.weight"],
        f"{d}mlp.fc1.bias": src[f"{s}mlp.fc1.bias"],
        f"{d}mlp.fc2.weight": src[f"{s}mlp.fc2.weight"],
        f"{d}mlp.fc2.bias": src[f"{s}mlp.fc2.bias"],
    }


def _pool_head(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # nn.MultiheadAttention stacks q, k, v; timm's AttentionPoolLatent has q and fused kv
    in_w, in_b = src["head.attention.in_proj_weight"], src["head.attention.in_proj_bias"]
    dim = in_w.shape[1]
    return {
        "attn_pool.latent": src["head.probe"],
        "attn_pool.q.weight": in_w[:dim],
        "attn_pool.q.bias": in_b[:dim],
        "attn_pool.kv.weight": in_w[dim:],
        "attn_pool.kv.bias": in_b[dim:],
        "attn_pool.proj.weight": src["head.attention.out_proj.weight"],
        "attn_pool.proj.bias": src["head.attention.out_proj.bias"],
        "attn_pool.norm.weight": src["head.layernorm.weight"],
        "attn_pool.norm.bias": src["head.layernorm.bias"],
        "attn_pool.mlp.fc1.weight": src["head.mlp.fc1.weight"],
        "attn_pool.mlp.fc1.bias": src["head.mlp.fc1.bias"],
        "attn_pool.mlp.fc2.weight": src["head.mlp.fc2.weight"],
        "attn_pool.mlp.fc2.bias": src["head.mlp.fc2.bias"],
    }
