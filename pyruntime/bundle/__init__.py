"""Triton kernel bundles: collect compiled kernels, write them to one
verified data-only file, restore them into a cache.

The layers, each importing only those above it in this list::

    rules     names, hashes, limits, litter (what a reader accepts)
    model     TritonBundle and its kernels as frozen data (lazy rows)
    compat    this installation vs a bundle: Triton version, Python ABI,
              target, cache directory, the on_mismatch policy
    format    bundle bytes and files: encode / decode / save / load
    restore   atomic writes into a cache, cache cleaning
    collect   TritonBundler (Inductor's life cycle) and collect_dir

    kernel dirs --collect--> TritonBundle --format--> bundle file
    bundle file --format (verify all)--> TritonBundle --restore--> cache dir

Importing this package wires the format and the restorer into the model's
``to_bytes``/``from_bytes``/``save``/``load``/``restore`` methods.
(``pyruntime.bundle.restore`` is the restorer module; its ``restore``
function is ``TritonBundle.restore``.)
"""

from __future__ import annotations

from . import format as _format
from . import model as _model
from . import restore as _restore
from .collect import BundlerConfig, TritonBundler, collect_dir
from .compat import installed_triton_abi, installed_triton_version, triton_cache_dir
from .format import load_bundle
from .model import (
    TritonBundle,
    TritonBundleEntry,
    TritonBundlerMetadata,
    TritonKernelArtifact,
    TritonKernelArtifacts,
    merge,
)
from .restore import CleanResult, RestoreResult, clean

_model.bind_io(encode=_format.encode, decode=_format.decode, save=_format.save, load=_format.load,
               restore=_restore.restore)

__all__ = [
    "BundlerConfig",
    "CleanResult",
    "RestoreResult",
    "TritonBundle",
    "TritonBundleEntry",
    "TritonBundler",
    "TritonBundlerMetadata",
    "TritonKernelArtifact",
    "TritonKernelArtifacts",
    "clean",
    "collect_dir",
    "installed_triton_abi",
    "installed_triton_version",
    "load_bundle",
    "merge",
    "triton_cache_dir",
]
