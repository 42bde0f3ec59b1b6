"""Check that nothing wrote into an installed (non-editable) evflow, then report its folders.

Run by ci/test with the venv's Python before it switches the venv to an
editable install. Files that pip did not install (a Numba cache, results,
anything) survive ``pip uninstall`` and turn the package folder into a
namespace package that shadows the editable install, so finding one is a bug:
this prints them and exits 1. ``--print-dirs`` prints the installed package
folders (one per line) for ci/test to remove after uninstalling.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("evflow", "evflow_napari")


def main(argv) -> int:
    try:
        dist = metadata.distribution("evflow")
    except metadata.PackageNotFoundError:
        return 0
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        return 0  # an editable install: the package folders are the working tree
    root = Path(dist.locate_file(""))
    installed = {(root / str(f)).resolve() for f in (dist.files or [])}
    dirs = [root / p for p in PACKAGES if (root / p).is_dir()]
    if "--print-dirs" in argv:
        print("\n".join(str(d) for d in dirs))
        return 0
    stray = [p for d in dirs for p in d.rglob("*")
             if p.is_file() and p.resolve() not in installed and p.suffix != ".pyc"]
    if stray:
        print(f"ci/install_check: {len(stray)} file(s) inside the installed evflow that pip did not install "
              "(evflow must not write into its installation):", file=sys.stderr)
        for p in stray[:20]:
            print(f"  {p}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
