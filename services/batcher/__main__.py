"""python -m services.batcher [--flags]: run the client-facing batcher."""

import sys

from services.batcher.server import run_processes, serve
from services.batcher.settings import parse
from tideserve import serving
from tideserve.logs import configure_logging
from tideserve.procs import exit_with_parent


def main() -> None:
    exit_with_parent()
    settings = parse()
    configure_logging("batcher", settings.log_level, settings.json_logs)
    if settings.processes > 1:
        raise SystemExit(run_processes(settings, sys.argv[1:]))
    serving.run_service(serve(settings))


if __name__ == "__main__":
    main()
