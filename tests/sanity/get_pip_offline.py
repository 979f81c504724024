"""Offline stand-in for the pip bootstrap script ansible-test downloads.

``ansible-test sanity --venv`` bootstraps pip in each new venv with a script it
fetches from the network unless a cached copy exists. This copy uses the interpreter's
own ``ensurepip`` and then installs the requested packages from the configured index.
"""

from __future__ import annotations

import subprocess
import sys

SKIP = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
    args = [arg for arg in sys.argv[1:] if arg not in SKIP]
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    main()
