"""Lazy checkpoint reading: a `LazyState` knows every tensor's key, shape and file, and reads one
tensor's bytes only when asked, so a conversion holds about one shard plus one layer group.

- safetensors: the header gives keys, shapes and byte ranges; a tensor is one `readinto` of its
  range (no torch, no memory map whose touched pages would stay resident).
- `.pth`/`.bin`: `torch.load(weights_only=True, mmap=True)`; a pickle could otherwise run code, and
  the memory map means only the tensors read are paged in. One such file is open at a time
  (`_TorchFiles`); switching files unmaps the previous one. Files in the legacy (pre-zip) format
  cannot be mapped and are read whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator

import numpy as np


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as one: truncated, not the format, not a state dict.

    The message names the file (and the tensor); the jobs report it as bad input, not as a bug."""


# safetensors dtype names -> numpy (bfloat16 through ml_dtypes, as jax reads it).
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: where it is, what it is, how to read it. `origin` labels it for summaries."""

    shape: tuple[int, ...]
    dtype: np.dtype
    file: str
    file_key: str  # the key inside `file` (the state key may carry a prefix)
    read: Callable[[], np.ndarray]
    origin: str = ""

    def where(self, key: str) -> str:
        """`[file]`, or `[file as key-in-file]` when the state key carries a prefix: for messages."""
        named = "" if key == self.file_key else f" as {self.file_key}"
        return f"[{self.file}{named}]"


class LazyState:
    """{key: Entry}: a state dict whose tensors are read one at a time with `read(key)`."""

    def __init__(self, entries: dict[str, Entry] | None = None):
        self.entries: dict[str, Entry] = dict(entries or {})

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: str) -> Entry:
        return self.entries[key]

    def read(self, key: str) -> np.ndarray:
        """The tensor's values, read now (a fresh array, or a view of a mapped torch file)."""
        return self.entries[key].read()

    def pop(self, key: str) -> Entry:
        """Remove and return an entry (its tensor is not read)."""
        return self.entries.pop(key)

    def add(self, key: str, entry: Entry) -> None:
        """Refuses a key given twice (say, a ViT inside a full checkpoint and again as --vit)."""
        if key in self.entries:
            raise CheckpointFileError(
                f"{key} is given twice: in {self.entries[key].file} and in {entry.file}"
            )
        self.entries[key] = entry

    def update(self, other: LazyState, prefix: str = "", origin: str | None = None) -> None:
        """Add `other`'s entries under `prefix`, relabelled with `origin` if given."""
        for key, entry in other.entries.items():
            if origin is not None:
                entry = dataclasses.replace(entry, origin=origin)
            self.add(prefix + key, entry)

    def with_origin(self, origin: str) -> LazyState:
        """The same entries labelled `origin` (where the summary says they come from)."""
        return LazyState(
            {k: dataclasses.replace(e, origin=origin) for k, e in self.entries.items()}
        )


def read_safetensors(path: str) -> LazyState:
    """Keys and shapes from the header; each tensor read from its byte range on demand."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 0 < header_len <= size - 8:
            raise CheckpointFileError(
                f"{path}: not a safetensors file (header length {header_len})"
            )
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointFileError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        dtype = _numpy_dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        if end - start != int(np.prod(shape)) * dtype.itemsize or base + end > size:
            raise CheckpointFileError(
                f"{path}: tensor {key} {shape} has a bad byte range (truncated?)"
            )
        entries[key] = Entry(
            shape,
            dtype,
            path,
            key,
            lambda o=base + start, s=shape, d=dtype: _read_range(path, o, s, d),
        )
    return LazyState(entries)


def _read_range(path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    out = np.empty(shape, dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        f.readinto(out.reshape(-1).view(np.uint8))
    return out


class _TorchFiles:
    """The one open `.pth`/`.bin` file: {key: torch.Tensor}, memory-mapped where possible."""

    path: str | None = None
    state: dict | None = None

    @classmethod
    def open(cls, path: str) -> dict:
        if cls.path != path:
            cls.path, cls.state = None, None  # unmap the previous file before mapping the next
            cls.state, cls.path = _load_torch(path), path
        return cls.state

    @classmethod
    def close(cls) -> None:
        cls.path, cls.state = None, None


def _load_torch(path: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err) and "zip" not in str(err):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # LAVIS checkpoints wrap the state dict
    if not isinstance(state, dict):
        raise CheckpointFileError(f"{path}: holds a {type(state).__name__}, not a state dict")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointFileError(
                f"{path}: entry {key!r} is a {type(tensor).__name__}, not a tensor"
            )
    return state


def _read_torch(path: str, key: str) -> np.ndarray:
    import torch

    tensor = _TorchFiles.open(path)[key]
    # numpy has no bfloat16: widen (the converter stores float32 parameters anyway).
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def read_torch_pickle(path: str) -> LazyState:
    """A .pth/.bin state dict (LAVIS's {"model": ...} wrapper is unwrapped)."""
    import torch

    state = _TorchFiles.open(path)
    entries = {}
    for key, tensor in state.items():
        dtype = np.float32 if tensor.dtype == torch.bfloat16 else tensor.numpy().dtype
        entries[key] = Entry(
            tuple(tensor.shape), np.dtype(dtype), path, key, lambda k=key: _read_torch(path, k)
        )
    _TorchFiles.close()
    return LazyState(entries)


_HF_WEIGHT_FILES = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
]


def read_hf_directory(directory: str) -> LazyState:
    """`model.safetensors`, sharded safetensors with their index, or `pytorch_model.bin`."""
    for name in _HF_WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if not name.endswith(".index.json"):
            return read_file(path)
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = LazyState()
        for shard in shards:
            shard_path = os.path.join(directory, shard)
            if not os.path.exists(shard_path):
                raise FileNotFoundError(f"{path} names shard {shard}, which does not exist")
            state.update(read_file(shard_path))
        return state
    raise FileNotFoundError(
        f"{directory}: no checkpoint found (looked for {', '.join(_HF_WEIGHT_FILES)})"
    )


def read_file(path: str) -> LazyState:
    """One weights file: `.safetensors`, or a torch pickle (`.pth`/`.bin`/`.pt`)."""
    return read_safetensors(path) if path.endswith(".safetensors") else read_torch_pickle(path)


def read_any(path: str) -> LazyState:
    """A directory (HF layout) or a single safetensors / torch file."""
    if os.path.isdir(path):
        return read_hf_directory(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return read_file(path)


def release() -> None:
    """Unmap the open torch file (at the end of a conversion)."""
    _TorchFiles.close()
