"""The model side: loading (LoRA, precision), generation, fused kernels, adapter starts, export."""
