"""python -m services.scaler [--flags]: run the scaler."""

from services.scaler.server import serve
from services.scaler.settings import parse
from tideserve import serving
from tideserve.logs import configure_logging
from tideserve.procs import exit_with_parent


def main() -> None:
    exit_with_parent()
    settings = parse()
    configure_logging("scaler", settings.log_level, settings.json_logs)
    serving.run_service(serve(settings))


if __name__ == "__main__":
    main()
