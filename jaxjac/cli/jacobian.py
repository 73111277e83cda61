"""`jaxjac jacobian`: a dataset in, every sample's input Jacobian out, streamed and resumable."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import threading
import time
from pathlib import Path

from .._errors import JaxjacError
from ._common import add_precision_flag, load_npy, print_note, refuse_writing_over_inputs, sha256_of

DESCRIPTION = """\
Compute the input Jacobian of every sample of a dataset with a converted model
(a .jaxjac artifact; torch is not needed) and stream it to an output file.

DATA is a .npy, .npz, .h5/.hdf5, .mat or .zarr array of samples (N, *sample_shape);
--key names the array inside an .npz, HDF5 file, MATLAB file or zarr group.
The output holds (N, K, *sample_shape) for --target all, else (N, *sample_shape).
OUT is a .npy or .zarr (bfloat16 only as .zarr). While a run is unfinished
the rows go to OUT.partial; a complete run renames it onto OUT.

Batches have one fixed size (the last is padded), so the model compiles once;
the compiled program is kept in a cache (--compile-cache). Reading, computing
on every local device and writing overlap. Rows whose input holds NaN or Inf
are written as NaN and reported.

Ctrl-C (SIGINT) or SIGTERM stops cleanly: the batches in flight are finished,
the output is flushed, progress is saved in OUT.progress.json, and the command
to continue is printed (exit 130 or 143). Continuing with --resume gives an
output bit-identical to an uninterrupted run. An existing output is never
overwritten without --force.

Multi-process runs (one process per host, or several on one machine) join one
JAX job through --coordinator/--num-processes/--process-id, or JAX's standard
variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Each
process computes a contiguous block of rows and writes its own shard
OUT-stem.0000P-of-0000N.suffix; process 0 writes OUT.index.json listing them.
"""

EPILOG = """\
examples:
  jaxjac jacobian net.jaxjac X.npy -o J.npy                        # (N, K, 1, 224)
  jaxjac jacobian net.jaxjac X.npy -o S.npy --target predicted     # (N, 1, 224)
  jaxjac jacobian net.jaxjac X.npy -o S.npy --labels y.npy --output log-probs
  jaxjac jacobian net.jaxjac X.h5 --key spectra -o J.zarr --resume
  jaxjac jacobian net.jaxjac X.npy -o J.npy --dtype float16 --batch-size auto --json

  # two processes (here on one machine), each writing its own shard:
  jaxjac jacobian net.jaxjac X.npy -o J.npy --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0 &
  jaxjac jacobian net.jaxjac X.npy -o J.npy --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 1
"""


def _target(text: str) -> str | int:
    if text in ("all", "predicted"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all', 'predicted' or a class index; got {text!r}") from None


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto'; got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `jacobian` subparser."""
    p = subparsers.add_parser(
        "jacobian",
        help="stream every sample's input Jacobian of a dataset to a file",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", type=Path, help="a .jaxjac artifact (from `jaxjac convert`)")
    p.add_argument("data", metavar="DATA", type=Path, help="the samples: .npy, .npz, .h5, .zarr (or .pt with torch)")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUT", help="the output: .npy or .zarr")
    p.add_argument("--key", help="the array inside an .npz, .h5, .mat or .zarr group")
    p.add_argument("--cube", action="store_true", help="DATA is a hyperspectral cube (H, W, bands): one sample a pixel")
    what = p.add_argument_group("what to differentiate")
    what.add_argument("--target", type=_target, metavar="all|predicted|INT", help="output rows (default all)")
    what.add_argument(
        "--labels",
        type=Path,
        metavar="y.npy",
        help="differentiate each sample's true label (N ints); not with --target",
    )
    what.add_argument("--output", choices=("logits", "probs", "log-probs"), default="logits", help="default logits")
    how = p.add_argument_group("how")
    how.add_argument(
        "--dtype",
        choices=("float64", "float32", "float16", "bfloat16"),
        help="output dtype (default: the model's, float32 or float64)",
    )
    how.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N|auto",
        help="samples per step over all devices (default auto: a power of two per device, on accelerators the "
        "largest that fits its memory, on CPUs the largest whose working set stays within 32 MiB of cache)",
    )
    how.add_argument("--method", choices=("vmap-jacrev", "batched-vjp"), default="vmap-jacrev")
    add_precision_flag(how)
    how.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help="folder that keeps compiled programs between runs (JAX's XLA cache and, on CPU, jaxjac's "
        "whole-program cache, so a rerun neither traces nor compiles); default ~/.cache/jaxjac/xla",
    )
    files = p.add_mutually_exclusive_group()
    files.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.progress.json")
    files.add_argument("--force", action="store_true", help="overwrite an existing OUT (and its progress file)")
    show = p.add_argument_group("reporting")
    show.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    show.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    multi = p.add_argument_group("multi-process (see above)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    multi.add_argument("--num-processes", type=int, metavar="P")
    multi.add_argument("--process-id", type=int, metavar="I")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    return p


def run(args: argparse.Namespace) -> int:
    """Check the inputs and the output, then stream the Jacobians (see `jaxjac._run.run_jacobian`)."""
    started = _Clock()
    import jax

    from .. import _distributed as dist
    from .._batching import default_cache_dir, enable_compile_cache

    dist.initialize(args.coordinator, args.num_processes, args.process_id)
    cache = args.compile_cache or default_cache_dir()
    enable_compile_cache(None if str(cache) == "off" else cache)
    quiet_stdout = args.json and jax.process_count() > 1
    with _stdout_to_stderr() if quiet_stdout else contextlib.nullcontext():
        error, job = None, None
        try:
            job = _prepare(args)
        except (JaxjacError, OSError) as caught:
            error = caught
        if not all(dist.all_processes(error is None)):  # every process goes on, or none does
            if error is not None:
                raise error
            raise JaxjacError(f"another process of this job failed; process {jax.process_index()} stops too")
        job.started = started
        return _execute(args, job)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 to stderr (gloo prints connection messages on stdout), except our JSON."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _REAL_STDOUT.append(saved)
    try:
        yield
    finally:
        sys.stdout.flush()
        _REAL_STDOUT.pop()
        os.dup2(saved, 1)
        os.close(saved)


class _Job:
    """Everything checked before the first batch: model, reader, labels, writer, sidecar."""


class _Clock:
    """A moment, as Unix time (comparable across processes) and as `perf_counter` (for durations)."""

    def __init__(self) -> None:
        self.unix, self.counter = time.time(), time.perf_counter()


def _prepare(args: argparse.Namespace) -> _Job:
    import jax

    from .. import _distributed as dist
    from .._data import (
        check_free_space,
        create_writer,
        open_reader,
        open_writer_for_resume,
        partial_path,
        refuse_foreign_folder,
        required_bytes,
    )
    from .._formulations import batch_jacobian_core
    from .._resume import check_fingerprint, data_digest, read_progress, sidecar_path
    from .._run import check_labels, output_shape

    if args.labels is not None and args.target is not None:
        raise JaxjacError(f"--labels and --target {args.target} both choose the class to differentiate; give one")
    if args.out.suffix not in (".npy", ".zarr") or args.out.name in (".npy", ".zarr"):
        raise JaxjacError(f"-o {str(args.out)!r}: expected an output path ending in .npy or .zarr")
    refuse_writing_over_inputs(
        {"-o": args.out},
        {"MODEL": args.model, "DATA": args.data, "--labels": args.labels},
        side_files={"-o": _side_files(args.out, jax.process_count())},
    )
    job = _Job()
    job.model = model = _load_model(args.model)
    _note_branches(args, model)
    job.target = "all" if args.target is None else args.target
    job.output = args.output.replace("-", "_")
    job.dtype = args.dtype or model.spec.dtype  # a float64 model's Jacobians are not rounded unasked
    reader = open_reader(
        args.data, sample_shape=model.sample_shape, dtype=model.dtype, key=args.key, cube=args.cube, flag="DATA"
    )
    job.reader = reader
    for note in reader.notes:
        _note(args, note)
    n = reader.n_samples
    job.labels = None
    if args.labels is not None:
        job.labels = check_labels(_read_labels(args.labels), n, model.n_outputs, name=f"--labels {args.labels}")
        job.target = "labels"
    # Check target/output/method/precision against the model before any file is created.
    batch_jacobian_core(
        model,
        target=job.labels[:0] if job.labels is not None else job.target,
        output=job.output,
        method=args.method,
        precision=args.precision,
    )
    processes, process = jax.process_count(), jax.process_index()
    row0, row1 = dist.process_rows(n, process, processes)
    job.shape = output_shape(model, row1 - row0, job.target)
    job.full_shape = output_shape(model, n, job.target)
    if n == 0:
        _note(args, f"DATA {args.data} holds no samples: the output is empty, of shape {job.full_shape}")
    job.path = dist.shard_path(args.out, process, processes)
    job.sidecar = sidecar_path(job.path)
    job.fingerprint = {
        "model_sha256": sha256_of(args.model),
        "data": str(Path(args.data).resolve()),
        "data_shape": [n, *reader.sample_shape],
        "data_dtype": str(reader.source_dtype),
        "data_rows_sha256": data_digest(reader),
        "key": args.key,
        "cube": args.cube,
        "target": job.target,
        "labels_sha256": sha256_of(args.labels) if args.labels else None,
        "output": job.output,
        "dtype": job.dtype,
        "method": args.method,
        "precision": args.precision,
        "processes": processes,
        "process": process,
    }
    job.start_row, job.batch_size = 0, None
    partial = Path(partial_path(job.path))
    finished, unfinished = _exists(job.path), job.sidecar.exists() or _exists(partial)
    if args.resume and job.sidecar.exists():
        state = read_progress(job.sidecar)
        check_fingerprint(state["fingerprint"], job.fingerprint, job.sidecar)
        job.start_row, job.batch_size = int(state["completed_rows"]), int(state["batch_size"])
        if job.start_row > job.shape[0]:
            raise JaxjacError(
                f"cannot --resume: {job.sidecar} records {job.start_row} completed rows, but this run has "
                f"{job.shape[0]}; the progress file is damaged: pass --force to start over"
            )
        if args.batch_size not in (None, "auto", job.batch_size):
            _note(args, f"--resume keeps the interrupted run's batch size {job.batch_size}, so that rows are identical")
        if job.batch_size % jax.device_count():
            raise JaxjacError(
                f"cannot --resume: the interrupted run used batch size {job.batch_size}, which does not split over "
                f"this run's {jax.device_count()} devices; resume on the original devices, or pass --force"
            )
        job.writer = open_writer_for_resume(job.path, shape=job.shape, dtype=job.dtype)
    elif args.resume and unfinished:
        raise JaxjacError(
            f"cannot --resume: {partial} has no progress file {job.sidecar.name}, so which rows are done is "
            "unknown; pass --force to start over"
        )
    elif args.resume and finished:
        raise JaxjacError(
            f"cannot --resume: {job.path} is a finished output (it has no progress file {job.sidecar.name}); "
            "pass --force to recompute it"
        )
    else:
        if not args.force and unfinished:
            raise JaxjacError(
                f"{job.path} has an unfinished run ({job.sidecar.name}); pass --resume to continue it "
                "or --force to start over"
            )
        if finished and job.path.is_dir():
            refuse_foreign_folder(str(job.path))  # not a zarr output: --force would not help
        if not args.force and finished:
            raise JaxjacError(f"{job.path} already exists; pass --force to overwrite it (or choose another -o)")
        if args.resume:
            _note(args, f"nothing to resume for {job.path}; starting from the first row")
        check_free_space(job.path, required_bytes(job.shape, job.dtype))
        job.sidecar.unlink(missing_ok=True)
        job.writer = create_writer(job.path, shape=job.shape, dtype=job.dtype, overwrite=True)
    if job.batch_size is None:
        job.batch_size = _choose_batch_size(args, job, n)
    return job


def _side_files(out: Path, processes: int) -> list[tuple[Path, str]]:
    """Every file besides `out` that a run for `-o out` may create, replace or delete, with its role.

    `--force` deletes an old run's unfinished rows and progress file, so an input
    named like one of them is refused as surely as one named `out`.
    """
    from .. import _distributed as dist
    from .._data import partial_path
    from .._resume import sidecar_path

    files = [(dist.index_path(out), "the index of its shards")] if processes > 1 else []
    for process in range(processes):
        shard = dist.shard_path(out, process, processes)
        whose = "its" if processes == 1 else f"process {process}'s"
        if processes > 1:
            files.append((shard, f"{whose} shard"))
        files.append((Path(partial_path(shard)), f"{whose} unfinished rows"))
        files.append((sidecar_path(shard), f"{whose} progress file"))
    return files


def _execute(args: argparse.Namespace, job: _Job) -> int:
    import jax

    from .. import _distributed as dist
    from .._progress import Progress, summary
    from .._resume import write_progress
    from .._run import run_jacobian

    command = _resume_command(args, job.batch_size)

    def checkpoint(completed: int) -> None:
        write_progress(
            job.sidecar,
            fingerprint=job.fingerprint,
            completed_rows=completed,
            batch_size=job.batch_size,
            rows=job.shape[0],
            devices=jax.device_count(),
            resume_command=command,
        )

    if job.start_row == 0:
        checkpoint(0)
    stop, received = threading.Event(), []
    progress = Progress(total=job.shape[0], initial=job.start_row, devices=jax.device_count(), enabled=not args.quiet)
    prepared = time.perf_counter()
    with _signals_stop(stop, received):
        try:
            result = run_jacobian(
                job.model,
                job.reader,
                job.writer,
                target=job.target if job.labels is None else "all",
                labels=job.labels,
                output=job.output,
                dtype=job.dtype,
                method=args.method,
                precision=args.precision,
                batch_size=job.batch_size,
                start_row=job.start_row,
                stop_event=stop,
                on_checkpoint=checkpoint,
                on_rows=progress.update,
            )
        finally:
            progress.close()
            job.reader.close()
    ran = time.perf_counter()
    job.writer.close(complete=not result.interrupted)  # a finished output is renamed from OUT.partial onto OUT
    info = summary(result, output=str(job.path), platform=jax.devices()[0].platform, rows_total=job.shape[0])
    if result.interrupted:
        info["resume_command"] = command
        info["phases"] = _phases(job.started, prepared, ran, result)
        _report(args, info)
        from ._common import print_error

        print_error(
            f"interrupted by {signal.Signals(received[0]).name if received else 'a stop request'} after "
            f"{result.completed_rows} of {job.shape[0]} rows; progress is saved in {job.sidecar}; continue with: "
            f"{command}"
        )
        return 128 + (received[0] if received else signal.SIGINT)
    dist.barrier("jaxjac-jacobian-done")
    if jax.process_count() > 1 and jax.process_index() == 0:
        info["index"] = str(
            dist.write_index(
                args.out, n=job.full_shape[0], processes=jax.process_count(), shape=job.full_shape, dtype=job.dtype
            )
        )
    job.sidecar.unlink(missing_ok=True)
    info["phases"] = _phases(job.started, prepared, ran, result)
    _report(args, info)
    return 0


def _phases(started: _Clock, prepared: float, ran: float, result) -> dict:
    """Where this process's time went, in seconds, from the start of the command to its report.

    `prepare`: load the model, open the data, create the output; `setup`: compile
    (`compile_seconds` of it), put the model on the devices, start the threads;
    `stream`: read, compute, write (`seconds`); `finish`: close the output (fsync,
    rename onto OUT) and gather the summary.
    `started_at`/`finished_at` are Unix times, so that a caller can tell the
    interpreter's start-up and exit apart from the command.
    """
    finished = _Clock()
    return {
        "prepare": round(prepared - started.counter, 3),
        "setup": round(ran - prepared - result.seconds, 3),
        "stream": round(result.seconds, 3),
        "finish": round(finished.counter - ran, 3),
        "total": round(finished.counter - started.counter, 3),
        "started_at": round(started.unix, 3),
        "finished_at": round(finished.unix, 3),
    }


_REAL_STDOUT: list[int] = []  # the original stdout while fd 1 goes to stderr


def _report(args: argparse.Namespace, info: dict) -> None:
    import os
    import sys

    from .._progress import summary_line

    print(summary_line(info), file=sys.stderr)
    if args.json:
        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # a captured stdout (tests): plain print
            fd = None
        if fd == 1 and _REAL_STDOUT:
            os.write(_REAL_STDOUT[-1], (json.dumps(info) + "\n").encode())
        else:
            print(json.dumps(info))


@contextlib.contextmanager
def _signals_stop(stop: threading.Event, received: list[int]):
    """SIGINT/SIGTERM set `stop` (the run winds down cleanly); a second signal acts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        received.append(signum)
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _load_model(path: Path, *, flax_module: bool = False):
    """The artifact at `path`: a `GraphModel`, or with `flax_module` a `ConvertedModel` (which imports Flax)."""
    import jax

    from .._artifact import load, load_graph_model, needs_64bit_jax

    with contextlib.suppress(OSError, JaxjacError, ValueError, KeyError):  # load() explains any problem itself
        if path.is_file() and needs_64bit_jax(path):
            jax.config.update("jax_enable_x64", True)
    return load(path) if flax_module else load_graph_model(path)


def _read_labels(path: Path):
    return load_npy(path, "--labels", "integer labels (N,)", mmap=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _choose_batch_size(args: argparse.Namespace, job: _Job, n: int) -> int:
    import jax

    from .._batching import auto_batch_size, round_to_devices

    requested = args.batch_size
    if requested in (None, "auto"):
        size = auto_batch_size(
            job.model,
            target=job.labels[:0] if job.labels is not None else job.target,
            output=job.output,
            method=args.method,
            precision=args.precision,
            n_rows=n,
        )
        _note(args, f"--batch-size auto chose {size}")
        return size
    all_rows = round_to_devices(max(n, 1), jax.device_count())
    if requested > all_rows:  # a bigger batch would only compute padding
        if args.batch_size is not None:
            _note(args, f"batch size {requested} cut to {all_rows}: DATA has {n} rows")
        return all_rows
    size = round_to_devices(requested, jax.device_count())
    if size != requested:
        _note(args, f"batch size {requested} rounded up to {size}, a multiple of the {jax.device_count()} devices")
    return size


def _resume_command(args: argparse.Namespace, batch_size: int) -> str:
    words = ["jaxjac", "jacobian", str(args.model), str(args.data), "-o", str(args.out)]
    if args.key:
        words += ["--key", args.key]
    if args.cube:
        words.append("--cube")
    if args.target is not None:
        words += ["--target", str(args.target)]
    if args.labels:
        words += ["--labels", str(args.labels)]
    words += ["--output", args.output, "--method", args.method, "--precision", args.precision]
    if args.dtype:
        words += ["--dtype", args.dtype]
    words += ["--batch-size", str(batch_size)]
    if args.compile_cache:
        words += ["--compile-cache", str(args.compile_cache)]
    if args.coordinator:
        words += ["--coordinator", args.coordinator, "--num-processes", str(args.num_processes)]
        words += ["--process-id", str(args.process_id)]
    if args.quiet:
        words.append("--quiet")
    return shlex.join([*words, "--resume"])


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print_note(message)


def _note_branches(args: argparse.Namespace, model) -> None:  # noqa: ANN001  (either kind of loaded model)
    from ..converters.branches import branch_note

    note = branch_note(model.graph.nodes)
    if note is not None:
        _note(args, note)
