"""`jaxjac convert`: a torch checkpoint in, a checked `.jaxjac` artifact out."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

import numpy as np

from .._errors import JaxjacError
from ._common import (
    load_npy,
    parse_json_object,
    parse_shape,
    print_note,
    refuse_writing_over_inputs,
    require_new_file,
    sha256_of,
)

DESCRIPTION = """\
Convert a trained PyTorch 1D CNN into a jaxjac artifact (one safetensors file
that loads without torch), after checking that its outputs and input Jacobians
match torch's on probe inputs. Nothing is written if the check fails.

CHECKPOINT may be any of (told apart by content, not by extension):
  - a TorchScript archive (torch.jit.save)              needs --input-shape
  - an ExportedProgram (torch.export.save, .pt2)        records its own shape
  - a state_dict, alone or in a training checkpoint
    ({'net': ..., 'optimizer': ...}, say)               needs --arch and --input-shape
  - a state_dict in a safetensors file (save_file,
    a Hugging Face model.safetensors)                   needs --arch and --input-shape
  - a pickled module (torch.save(net))                  needs --allow-pickle and --input-shape
"""

EPILOG = """\
examples:
  jaxjac convert model_ts.pt --input-shape 1,224
  jaxjac convert model.pt2 -o model.jaxjac
  jaxjac convert weights.pt --arch mynets:ECGNet --arch-kwargs '{"n_classes": 3}' --input-shape 1,224
  jaxjac convert net.pt --allow-pickle --input-shape 1,224 --check-data X_val.npy
  jaxjac convert model.pt2 --dtype float64 --force

--arch is imported with the current directory on the Python path, as with
`python -m`: run jaxjac from the directory that holds your model code.
"""


_DEFAULT_PROBES = 8


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `convert` subparser."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a torch checkpoint into a .jaxjac artifact",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", type=Path, help="the torch checkpoint to convert")
    parser.add_argument(
        "-o", "--output", type=Path, help="the artifact to write (default: CHECKPOINT with suffix .jaxjac)"
    )
    parser.add_argument(
        "--input-shape",
        type=parse_shape,
        metavar="C,L",
        help="shape of ONE sample, without the batch axis: '1,224', '224' or '(1, 224)'",
    )
    source = parser.add_argument_group("state_dict and pickled checkpoints")
    source.add_argument(
        "--arch",
        metavar="PKG.MOD:CLASS",
        help="the class (or factory) a state_dict belongs to; for a module pickled by a script run as "
        "`python train.py`, whose classes are named __main__.CLASS, the module that defines them (train:Net)",
    )
    source.add_argument(
        "--arch-kwargs", type=parse_json_object, default={}, metavar="JSON", help="keyword arguments for --arch"
    )
    source.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a fully pickled module; this EXECUTES CODE from the file, use only for files you trust",
    )
    check = parser.add_argument_group("the conversion check")
    check.add_argument("--check-data", type=Path, metavar="X.npy", help="probe inputs (P, *sample_shape) to check on")
    check.add_argument(
        "--probes",
        type=int,
        default=_DEFAULT_PROBES,
        metavar="N",
        help=f"random probes when no --check-data (default {_DEFAULT_PROBES})",
    )
    check.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="relative tolerance of the check (default 1e-4); in float32, a miss that float32 rounding and kinks explain (against torch in float64) passes",
    )
    check.add_argument("--atol", type=float, default=0.0, help="absolute tolerance of the check (default 0)")
    check.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check, for a model torch's autograd cannot differentiate (an in-place op on a tensor its "
        "gradient needs) or run on probes; the artifact records that it was not checked",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="float type (default float32)"
    )
    parser.add_argument(
        "--output-index",
        type=_index_or_name,
        metavar="I|NAME",
        help="which output to keep when forward returns several: its number, or its dict key or path as the "
        "error lists them (--output-index logits, --output-index \"out[1]['pred']\")",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, convert and check it, and write the artifact."""
    import jax
    import torch

    from .._artifact import save
    from .._check import format_report
    from .._convert import convert
    from .._load import load_checkpoint
    from .._readers import match_sample_shape
    from .._torch_dtypes import kept_wider

    output = args.output or args.checkpoint.with_suffix(".jaxjac")
    require_new_file(output, args.force)  # fail before the slow part
    refuse_writing_over_inputs({"-o": output}, {"CHECKPOINT": args.checkpoint, "--check-data": args.check_data})
    if args.probes < 1:
        raise JaxjacError(f"--probes must be at least 1; got {args.probes}")
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if not (math.isfinite(value) and value >= 0):
            raise JaxjacError(f"{flag} must be a finite number >= 0; got {value}")
    if args.input_shape is not None:
        _refuse_a_sample_beyond_memory(args.input_shape, args.dtype)
    check_data = _read_check_data(args.check_data, args.dtype) if args.check_data else None
    sample_shape = args.input_shape
    if sample_shape is None and check_data is not None:
        sample_shape = tuple(check_data.shape[1:])
    checkpoint = load_checkpoint(
        args.checkpoint,
        sample_shape=sample_shape,
        arch=args.arch,
        arch_kwargs=args.arch_kwargs,
        allow_pickle=args.allow_pickle,
    )
    for note in checkpoint.notes:
        print_note(note)
    if args.arch:  # --force must not replace the model's own source
        module = sys.modules.get(args.arch.partition(":")[0])
        source_file = getattr(module, "__file__", None)
        refuse_writing_over_inputs({"-o": output}, {"--arch": Path(source_file) if source_file else None})
    sample_shape = sample_shape or checkpoint.sample_shape
    if sample_shape is None:
        raise JaxjacError(
            f"{args.checkpoint} ({checkpoint.format}) does not record its input shape; pass the shape of one "
            "sample, e.g. --input-shape 1,224"
        )
    if check_data is not None:
        # (P, 224) probes for a model of (1, 224) samples, as `jaxjac jacobian` accepts them.
        for note in match_sample_shape(check_data.shape, tuple(sample_shape), f"--check-data {args.check_data}", False):
            print_note(note)
        check_data = check_data.reshape((len(check_data), *sample_shape))
    source = {
        "file": args.checkpoint.name,
        "sha256": sha256_of(args.checkpoint),
        "format": checkpoint.format,
    }
    # The CLI owns its process, so it turns on 64-bit JAX where torch computes in float64 (kept_wider's buffers).
    float64_in_float32 = kept_wider(checkpoint.net, torch.float32)
    x64 = jax.enable_x64(True) if args.dtype == "float64" or float64_in_float32 else contextlib.nullcontext()
    with x64:
        try:
            model = convert(
                checkpoint.net,
                # A real sample, where given: a forward that branches on the data is traced its way.
                np.zeros((1, *sample_shape)) if check_data is None else check_data[:1],
                dtype=args.dtype,
                output_index=args.output_index,
                check=not args.no_check,
                check_data=check_data,
                n_probes=args.probes,
                rtol=args.rtol,
                atol=args.atol,
                metadata={"source": source},
            )
        except MemoryError as error:
            if args.probes <= _DEFAULT_PROBES or check_data is not None:
                raise
            raise JaxjacError(
                f"out of memory making --probes {args.probes} random samples of shape {tuple(sample_shape)} for the "
                f"check; a few suffice (default {_DEFAULT_PROBES}), or pass --check-data with real samples"
            ) from error
        save(model, output, overwrite=args.force)
    if args.no_check:
        print_note("the conversion was not checked against torch (--no-check)")
    else:
        print(format_report(model.metadata["check"]))
    print(f"wrote {output} (input {sample_shape} -> output {model.output_shape}, {model.dtype})")
    return 0


def _index_or_name(text: str) -> int | str:
    """`--output-index`: a number where it reads as one, else a name."""
    try:
        return int(text)
    except ValueError:
        return text


def _refuse_a_sample_beyond_memory(shape: tuple[int, ...], dtype: str) -> None:
    """Refuse `--input-shape` when one sample would take more than an eighth of the machine's memory.

    Converting holds the sample, its activations and the check's probes and
    Jacobians at once; torch would otherwise fail with an allocator traceback.
    """
    sample_bytes = math.prod(shape) * np.dtype(dtype).itemsize
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not every platform reports it
        return
    if sample_bytes > memory // 8:
        raise JaxjacError(
            f"--input-shape {','.join(map(str, shape))}: one sample of that shape is {sample_bytes / 2**30:,.1f} GiB "
            f"in {dtype}, too large to convert on this machine ({memory / 2**30:,.0f} GiB of memory); give the shape "
            "of one sample, e.g. 1,224 (channels, length)"
        )


def _read_check_data(path: Path, dtype: str) -> np.ndarray:
    data = load_npy(path, "--check-data", "probe samples (P, *sample_shape) of real numbers")
    if data.ndim < 2 or len(data) == 0:
        raise JaxjacError(
            f"--check-data {path}: expected probe samples (P, *sample_shape), P >= 1; found shape {data.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(data.astype(np.float64)).all():
            raise JaxjacError(f"--check-data {path}: expected finite probe samples; found NaN or Inf values")
        if np.abs(data).max() > np.finfo(dtype).max:
            raise JaxjacError(
                f"--check-data {path}: holds values beyond the {dtype} range (up to {np.finfo(dtype).max:.3g})"
            )
    return data
