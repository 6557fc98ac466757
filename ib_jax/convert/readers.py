"""Read checkpoints into flat {key: numpy array} dicts: safetensors without torch, .pth/.bin safely."""

from __future__ import annotations

import json
import os

import numpy as np


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except TypeError:
        # bfloat16 tensors have no numpy dtype in older safetensors; go through ml_dtypes.
        return _read_safetensors_bf16(path)


def _read_safetensors_bf16(path: str) -> dict[str, np.ndarray]:
    import ml_dtypes

    dtypes = {
        "BF16": ml_dtypes.bfloat16,
        "F16": np.float16,
        "F32": np.float32,
        "F64": np.float64,
        "I64": np.int64,
        "I32": np.int32,
        "U8": np.uint8,
        "BOOL": np.bool_,
    }
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[key] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(
            info["shape"]
        )
    return out


def read_torch_pickle(path: str) -> dict[str, np.ndarray]:
    """A .pth/.bin state dict, loaded with weights_only=True (a pickle could otherwise run code)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # LAVIS checkpoints wrap the state dict
    out = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(tensor).__name__}, not a tensor")
        out[key] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return out


def read_hf_directory(directory: str) -> dict[str, np.ndarray]:
    """`model.safetensors`, sharded safetensors with their index, or `pytorch_model.bin`."""
    candidates = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ]
    for name in candidates:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            read = read_safetensors if name.startswith("model.") else read_torch_pickle
            state = {}
            for shard in shards:
                state.update(read(os.path.join(directory, shard)))
            return state
        return read_safetensors(path) if name.endswith(".safetensors") else read_torch_pickle(path)
    raise FileNotFoundError(
        f"{directory}: no checkpoint found (looked for {', '.join(candidates)})"
    )


def read_any(path: str) -> dict[str, np.ndarray]:
    if os.path.isdir(path):
        return read_hf_directory(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return read_safetensors(path) if path.endswith(".safetensors") else read_torch_pickle(path)
