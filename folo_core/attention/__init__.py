"""Attention contract: backends, their metadata and the model-side ``Attention`` layer."""

from folo_core.attention.backend import (
    AttentionBackend,
    AttentionCapabilities,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

__all__ = [
    "AttentionBackend",
    "AttentionCapabilities",
    "AttentionImpl",
    "AttentionMetadataBuilder",
    "CommonAttentionMetadata",
]
