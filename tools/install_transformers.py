"""Install one transformers release into the running environment, even where an optional requirement of it cannot be
installed (used by `make`; the README gives users the same two steps).

transformers 5.25 requires `kernels>=0.19.1,<0.20` for its hub kernels, which not every platform or package mirror
carries. Where `pip install transformers==V` fails for that reason, this installs transformers without dependencies
and then each of its requirements that can be installed, names the ones left out, and leaves hub kernels to be
switched off (the plugin sets `USE_HUB_KERNELS=0` at import when `kernels` is missing).

    python tools/install_transformers.py 5.25.0
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from packaging.requirements import Requirement

#: Requirements transformers can run without, with the feature that goes with them switched off.
OPTIONAL_AT_RUN_TIME = {"kernels": "hub kernels (USE_HUB_KERNELS=0)"}


def pip(*args: str) -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args]).returncode == 0


def main(version: str) -> int:
    if pip(f"transformers=={version}"):
        return 0
    print(f"transformers=={version} with all its requirements is not installable here; retrying without them")
    if not pip("--no-deps", f"transformers=={version}"):
        return 1
    left_out = []
    for line in importlib.metadata.requires("transformers") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or not for this platform
        if not pip(str(requirement)):
            if requirement.name not in OPTIONAL_AT_RUN_TIME:
                print(f"error: transformers {version} requires {requirement}, which cannot be installed")
                return 1
            left_out.append(f"{requirement} (off: {OPTIONAL_AT_RUN_TIME[requirement.name]})")
    print(f"installed transformers {version} without " + ", ".join(left_out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
