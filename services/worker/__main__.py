"""python -m services.worker [--flags]: run one worker."""

from services.worker.server import serve
from services.worker.settings import parse
from tideserve import serving
from tideserve.logs import configure_logging
from tideserve.procs import exit_with_parent


def main() -> None:
    exit_with_parent(adoptable=True)
    settings = parse()
    configure_logging("worker", settings.log_level, settings.json_logs)
    serving.run_service(serve(settings))


if __name__ == "__main__":
    main()
