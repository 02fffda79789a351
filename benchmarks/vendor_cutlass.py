"""Copy the CUTLASS headers out of the nvidia-cutlass wheel into third_party/cutlass/include.

The CUDA build needs CUTLASS's headers (include/cutlass, include/cute: 26 MB); the GPU machine
has no package index, so they travel with the device call as an ignored folder (git ignores
third_party/cutlass/; benchmarks/README.md has the call). setup.py and CMakeLists.txt take that
folder when it exists (after $NEURONSPEC_CUTLASS_INCLUDE, before the installed package).

    python benchmarks/vendor_cutlass.py                  # the pinned wheel: installed, else pip download
    python benchmarks/vendor_cutlass.py --wheel W.whl    # a wheel file you have
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "third_party" / "cutlass"
PREFIX = "cutlass_library/source/include/"


def pinned_version() -> str:
    """The nvidia-cutlass version pinned in pyproject.toml's build requirements."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'"nvidia-cutlass==([0-9.]+)"', text)
    if m is None:
        raise ValueError("pyproject.toml: no nvidia-cutlass==VERSION build requirement")
    return m.group(1)


def download_wheel(version: str, folder: Path) -> Path:
    """pip download the nvidia-cutlass wheel of `version` (no dependencies) into `folder`."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", str(folder), f"nvidia-cutlass=={version}"], check=True)
    wheels = sorted(folder.glob(f"nvidia_cutlass-{version}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no nvidia_cutlass-{version} wheel in {folder}")
    return wheels[0]


def vendor(wheel: Path, dest: Path = DEST) -> Path:
    """Extract include/cutlass and include/cute of `wheel` into dest/include (replacing what was
    there only once the new copy is complete) and write dest/VERSION; → dest/include."""
    version = Path(wheel).name.split("-")[1]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".include-", dir=dest))
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.startswith(PREFIX + "cutlass/") or n.startswith(PREFIX + "cute/")]
            if PREFIX + "cutlass/version.h" not in names:
                raise ValueError(f"--wheel: {wheel} holds no {PREFIX}cutlass/version.h (not an nvidia-cutlass wheel?)")
            for name in names:
                if name.endswith("/"):
                    continue
                target = tmp / name[len(PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        old = dest / "include"
        if old.exists():
            shutil.rmtree(old)
        tmp.rename(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (dest / "VERSION").write_text(version + "\n", encoding="utf-8")
    return dest / "include"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", type=Path, help="an nvidia-cutlass wheel (default: pip download the pinned version)")
    p.add_argument("--dest", type=Path, default=DEST, help=f"target folder (default {DEST.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.wheel is not None and not args.wheel.is_file():
        print(f"--wheel: no such file {args.wheel}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel or download_wheel(pinned_version(), Path(folder))
        include = vendor(wheel, args.dest)
    size = sum(f.stat().st_size for f in include.rglob("*") if f.is_file())
    print(f"CUTLASS {(args.dest / 'VERSION').read_text().strip()} headers: {include} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
