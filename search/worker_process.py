"""The process ``run_study`` starts per local worker: ``python -m archscale.search.worker_process``.

Its arguments are ``WorkerOptions.process_args()``; the storage URL comes from the environment
(``ARCHSCALE_STORAGE``, never argv, which ``ps`` shows), and so does the allocator setting of the
``archscale`` command that started it. A user error is one line on stderr (exit 2), never a
traceback; a storage outage longer than its wait ends it with ``STORAGE_LOST``, silently.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m archscale.search.worker_process")
    parser.add_argument("name")
    parser.add_argument("--heartbeat", type=int, required=True)
    parser.add_argument("--grace", type=int, required=True)
    parser.add_argument("--max-retries", type=int, required=True)
    parser.add_argument("--storage-wait", type=float, required=True)
    parser.add_argument("--artifacts")
    parser.add_argument("--cores", help="comma-separated core ids to pin to")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--proposer", help="a designed study's engine, module:attribute")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import optuna

    from archscale import environment
    from archscale.arch.errors import ArchscaleError
    from archscale.search.outages import StorageUnavailable
    from archscale.search.worker import run_worker
    from archscale.search.worker_options import STORAGE_LOST, WorkerOptions

    args = parse(sys.argv[1:] if argv is None else argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = WorkerOptions(heartbeat_s=args.heartbeat, grace_s=args.grace,
                            max_retries=args.max_retries, storage_wait_s=args.storage_wait,
                            artifacts=args.artifacts, progress=args.progress,
                            proposer=args.proposer)
    cores = [int(c) for c in args.cores.split(",")] if args.cores else None
    try:
        run_worker(args.name, os.environ.get(environment.STORAGE), options, echo=print, cores=cores)
    except StorageUnavailable:
        sys.exit(STORAGE_LOST)  # the `study run` that started it says so, once for all workers
    except ArchscaleError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
