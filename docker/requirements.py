"""Print the requirements of an image: pyproject.toml's dependencies and those of the extras
given (comma-separated, possibly none), one a line, torch left out (the worker image installs
it first, pinned, from its own index).

    python3 requirements.py PYPROJECT EXTRAS
"""

import sys
import tomllib


def requirements(pyproject: str, extras: str) -> list[str]:
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    wanted = list(project["dependencies"])
    for extra in filter(None, extras.split(",")):
        wanted += project["optional-dependencies"][extra]
    return [r for r in dict.fromkeys(wanted) if not r.replace(" ", "").startswith("torch")]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2])))
