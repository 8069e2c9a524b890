"""Helpers shared by the transport tests."""

import torch


def held_bytes(op) -> int:
    """Bytes of the tensors an operator holds, not counting the input points it references."""
    storages = {}
    for name, value in vars(op).items():
        if isinstance(value, torch.Tensor) and name not in ("x", "y"):
            storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values())
