"""ONNX export of a model's eval forward (through jax2onnx), checked before the file is kept.

The file takes what the model takes: NHWC float32 images already normalised with its eval recipe
(``model.preprocess``), batch dimension symbolic (``B``: one file serves batch 1 and 64), input
``images`` → output ``logits`` (B, num_classes). An exporter can be wrong without an error
(jax2onnx 0.17 reads an explicit padding pair of ``nnx.max_pool`` as 'VALID': ResNet logits ~10%
off), so ``export_onnx`` keeps a file only when onnxruntime's logits match JAX's and every weight
that is exactly zero in the model (a pruned specialist) is still exactly zero in the file.

jax2onnx and onnxruntime are optional (``pip install 'taco-jax[onnx]'``) and imported on use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from taco_jax import files
from taco_jax.models.latency import call_speedups, latency_summary, timed_rounds

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MIN_OPSET = 18  # jax2onnx 0.17.1's files at 18 match JAX on our ResNet, ViT and ConvNeXt


def _require(module: str) -> Any:
    """``module``, or an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the {module} package: "
                          "pip install 'taco-jax[onnx]'") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """jax2onnx logs a traceback for each of its optional plugins whose package is missing
    (equinox, dm_pix) and its arguments on the root logger, onnx_ir a warning per untyped
    constant: while converting, only errors get through."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir", None)]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def jax_logits(model: nnx.Module, x: np.ndarray | jax.Array) -> np.ndarray:
    """The model's eval logits (B, num_classes) on ``x`` (B, H, W, C), jitted; the model is
    put in eval mode and left so."""
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return np.asarray(forward(state, np.asarray(x, np.float32)))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got − want| / max |want|: the parity measure (the largest logit sets the scale)."""
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return float(np.max(np.abs(got - want)) / max(scale, np.finfo(np.float32).tiny))


def kernel_zeros(model: nnx.Module) -> int:
    """Exact zeros in the model's 2-D (Linear) and 4-D (conv) parameters."""
    return sum(int(np.count_nonzero(np.asarray(v.get_value()) == 0))
               for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
               if np.ndim(v.get_value()) in (2, 4))


def onnx_kernel_zeros(proto: Any) -> int:
    """Exact zeros in an ONNX model's floating 2-D and 4-D initializers (its kernels)."""
    numpy_helper = _require("onnx.numpy_helper")
    total = 0
    for init in proto.graph.initializer:
        if len(init.dims) in (2, 4):
            a = numpy_helper.to_array(init)
            if np.issubdtype(a.dtype, np.floating):
                total += int(np.count_nonzero(a == 0))
    return total


def _session(source: str | os.PathLike | bytes, threads: int = 0) -> Any:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: each one also reaches the caller as raised
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def session_call(path: str | os.PathLike, *, threads: int = 0
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """The ONNX file at ``path`` as a function: float32 images (B, H, W, C) -> logits (B, K),
    one onnxruntime CPU session (``threads`` intra-op threads; 0: onnxruntime's default).

    Timing code calls it between calls of other models to interleave them
    (``onnxruntime_latency``; ``models.latency`` for the JAX side)."""
    session = _session(Path(path), threads)
    name = session.get_inputs()[0].name

    def call(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.asarray(x, np.float32)})[0]

    return call


def onnxruntime_latency(path: str | os.PathLike, x: np.ndarray, *, repeats: int = 20,
                        warmup: int = 3, threads: int = 0) -> dict[str, Any]:
    """Seconds per run of the ONNX file on ``x`` (B, H, W, C) in onnxruntime on the CPU:
    {median, min, max, batch, times} as ``models.latency.interleaved_latency`` reports them
    (the median is the figure to report; ``times``: every timed run)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    call = session_call(path, threads=threads)
    x = np.asarray(x, np.float32)
    times = timed_rounds([lambda: call(x)], warmup=warmup, min_rounds=repeats,
                         max_rounds=repeats)[0]
    return latency_summary(times, int(x.shape[0]))


def _convert(model: nnx.Module, image_shape: tuple[int, int, int], opset: int) -> Any:
    """jax2onnx's ModelProto of the model's eval forward, batch dimension ``B``."""
    jax2onnx = _require("jax2onnx")
    version = importlib.metadata.version("jax2onnx")
    model.eval()
    try:
        with _quiet_exporter():
            proto = jax2onnx.to_onnx(model, [("B", *image_shape)], opset=opset,
                                     input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    except Exception as e:
        raise ValueError(f"jax2onnx {version} cannot convert {type(model).__name__}: "
                         f"{_first_line(e)}") from e
    # jax2onnx's intermediate shape annotations can contradict the symbolic batch; onnxruntime
    # infers its own, so they are dropped.
    del proto.graph.value_info[:]
    return proto


def export_onnx(model: nnx.Module, path: str | os.PathLike, sample: np.ndarray | jax.Array, *,
                opset: int = MIN_OPSET, rtol: float = 1e-4,
                metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write the eval forward of ``model`` to ``path`` as ONNX, checked on ``sample``.

    ``sample``: (B, H, W, C) float32 inputs as the model takes them (normalised); H, W, C fix
    the file's image shape, the batch stays symbolic. The file is written beside ``path`` under
    a temporary name and renamed into place only after both checks pass:

    * parity: onnxruntime's logits on ``sample`` and on its first image alone (batch 1) against
      JAX's, max |ONNX − JAX| / max |JAX| ≤ ``rtol``;
    * zeros: the file's 2-D/4-D initializers hold at least as many exact zeros as the model's
      2-D/4-D parameters (pruned weights stay exactly zero).

    Either failing (or the conversion) raises a one-line ValueError and leaves nothing on disk.
    One self-contained file: models up to protobuf's 2 GB (ViT-L/16 is 1.2 GB).
    ``metadata``: key/value strings stored in the file (``metadata_props``). The model is put in
    eval mode and left so. Returns {path, opset, parity_max_rel_error, parity_batch,
    zeros_checked, zeros_in_file, jax2onnx, onnxruntime, bytes}.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset}; expected >= {MIN_OPSET}")
    if rtol < 0:
        raise ValueError(f"rtol={rtol}; expected >= 0")
    sample = np.asarray(sample, np.float32)
    if sample.ndim != 4 or not sample.shape[0]:
        raise ValueError(f"sample has shape {sample.shape}; expected (B, H, W, C) with B >= 1")
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    proto = _convert(model, sample.shape[1:], opset)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)

    path = Path(path)
    with files.replaced_atomically(path) as tmp:
        onnx.save_model(proto, tmp)
        try:
            call = session_call(tmp)
            got, got_one = call(sample), call(sample[:1])
        except Exception as e:
            raise ValueError(f"onnxruntime {ort.__version__} cannot run the exported file: "
                             f"{_first_line(e)}") from e
        want = jax_logits(model, sample)
        if got.shape != want.shape:
            raise ValueError(f"ONNX parity check failed: onnxruntime logits have shape "
                             f"{got.shape}, JAX's {want.shape}")
        err = max(relative_error(got, want), relative_error(got_one, want[:1]))
        if not err <= rtol:  # NaN fails too
            raise ValueError(f"ONNX parity check failed: onnxruntime logits differ from JAX's "
                             f"by {err:.3g} (max |Δ| / max |logit|), tolerance {rtol:g}")
        zeros, zeros_in_file = kernel_zeros(model), onnx_kernel_zeros(proto)
        if zeros_in_file < zeros:
            raise ValueError(f"ONNX zeros check failed: the file's kernels hold {zeros_in_file} "
                             f"exact zeros, the model's {zeros} (pruned weights must stay zero)")
    return {"path": str(path), "opset": opset, "parity_max_rel_error": err,
            "parity_batch": int(sample.shape[0]), "zeros_checked": zeros,
            "zeros_in_file": zeros_in_file,
            "jax2onnx": importlib.metadata.version("jax2onnx"),
            "onnxruntime": ort.__version__, "bytes": path.stat().st_size}


def available() -> bool:
    """Whether jax2onnx and onnxruntime are installed (``pip install 'taco-jax[onnx]'``)."""
    return all(importlib.util.find_spec(m) is not None for m in ("jax2onnx", "onnxruntime"))


def onnxruntime_speedups(reference: nnx.Module, candidates: Mapping[str, nnx.Module],
                         inputs: Sequence[np.ndarray | jax.Array], **rounds: Any
                         ) -> list[dict[str, Any]]:
    """``models.latency.speedups`` in onnxruntime on the CPU, for each of ``inputs`` (each
    (B, H, W, C); e.g. batch 1 and 64): every model exported once (``export_onnx``, checked on
    the first images of the largest input) to a temporary folder, then, per input, all timed
    against the reference's file in shared interleaved rounds (``models.latency.call_speedups``;
    ``rounds``: its round settings)."""
    inputs = [np.asarray(x, np.float32) for x in inputs]
    sample = max(inputs, key=len)[:8]
    models = {"": reference, **candidates}
    with tempfile.TemporaryDirectory(prefix="taco-onnx-") as folder:
        runs = {}
        for i, (name, model) in enumerate(models.items()):
            path = Path(folder) / f"{i}.onnx"
            export_onnx(model, path, sample)
            runs[name] = session_call(path)
        out = []
        for x in inputs:
            calls = {name: (lambda run=run, x=x: run(x)) for name, run in runs.items()}
            reference_call = calls.pop("")
            out.append(call_speedups(reference_call, calls, int(x.shape[0]), **rounds))
        return out
