"""Tensor-parallel process group state and collectives (torch.distributed; identity at size 1)."""
