"""python -m services.batcher [--flags]: run the client-facing batcher."""

import asyncio

from services.batcher.server import serve
from services.batcher.settings import parse
from tideserve.logs import configure_logging


def main() -> None:
    settings = parse()
    configure_logging("batcher", settings.log_level, settings.json_logs)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
