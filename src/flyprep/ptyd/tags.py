"""PtyPy's HDF5 type tags: how ``meta/`` maps Python values to HDF5 and back.

PtyPy's reader decides what a node is from ``attrs['type']``: ``'dict'`` on groups,
``'scalar'``, ``'array'``, ``'string'`` or ``'None'`` on datasets. Without the tags it
crashes, so every value flyprep writes into ``meta/`` goes through :func:`write_tagged`.
"""

from __future__ import annotations

from typing import Any, Mapping

import h5py
import numpy as np

from ..errors import PtydError

_STRING = h5py.string_dtype(encoding="utf-8", length=None)


def write_tagged(group: h5py.Group, name: str, value: Any) -> None:
    """Store ``value`` under ``group[name]`` with PtyPy's type tag."""
    if isinstance(value, Mapping):
        sub = group.create_group(name)
        sub.attrs["type"] = "dict"
        for key, item in value.items():
            write_tagged(sub, str(key), item)
        return
    if value is None:
        dset = group.create_dataset(name, data=np.zeros(1))
        dset.attrs["type"] = "None"
    elif isinstance(value, (str, bytes)):
        text = value.encode() if isinstance(value, str) else value
        dset = group.create_dataset(name, data=text, dtype=h5py.string_dtype("ascii"))
        dset.attrs["type"] = "string"
    elif np.ndim(value) == 0:
        dset = group.create_dataset(name, data=np.asarray(value))
        dset.attrs["type"] = "scalar"
    else:
        dset = group.create_dataset(name, data=np.asarray(value))
        dset.attrs["type"] = "array"


def read_tagged(group: h5py.Group, *, path: str) -> dict[str, Any]:
    """Read a tagged group into a dict, as PtyPy's reader does; raises :class:`PtydError`
    naming the node for a missing or unknown tag."""
    out: dict[str, Any] = {}
    for key in group:
        node = group.get(key)
        where = f"{group.name.rstrip('/')}/{key}"
        if node is None:
            raise PtydError(path, where, "dangling link")
        tag = node.attrs.get("type")
        if isinstance(tag, bytes):
            tag = tag.decode()
        if isinstance(node, h5py.Group):
            if tag != "dict":
                raise PtydError(path, where, f"group without type='dict' tag (has {tag!r})")
            out[key] = read_tagged(node, path=path)
            continue
        if tag is None:
            raise PtydError(path, where, "dataset has no 'type' attribute; PtyPy cannot read it")
        raw = node[()]
        if tag == "scalar":
            out[key] = raw.item() if isinstance(raw, np.generic) or np.ndim(raw) == 0 else raw
        elif tag in ("array", "arraylist"):
            out[key] = np.asarray(raw) if tag == "array" else list(np.asarray(raw))
        elif tag == "string":
            out[key] = raw.decode() if isinstance(raw, bytes) else str(raw)
        elif tag == "None":
            out[key] = None
        else:
            raise PtydError(path, where, f"unknown type tag {tag!r}")
    return out
