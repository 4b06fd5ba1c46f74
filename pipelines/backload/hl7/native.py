"""A compiled build (mypyc) of the message builders' modules, used only while it matches their source."""

from __future__ import annotations

import hashlib
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# The builders' per-resource work (serializer, segments, messages) and the structural check. The compiler
# sees no other module of ehrlift's (only these are copied into the build): their text alone decides it.
MODULES = ("encode", "segments", "messages", "structure")
PACKAGE = "pipelines.backload.hl7"
SOURCE = Path(__file__).resolve().parent
STORE = SOURCE.parents[2] / ".build" / "hl7-native"  # in the checkout, ignored by git
OFF = "EHRLIFT_NATIVE"  # "0": the source modules, even where a matching build exists

_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
src, out, tmp = sys.argv[1:4]
paths = [f"{src}/pipelines/backload/hl7/{m}.py" for m in sys.argv[4:]]
setup(
    name="ehrlift-hl7-native", packages=[], py_modules=[],
    script_args=["build_ext", "--build-lib", out, "--build-temp", tmp],
    ext_modules=mypycify(
        ["--ignore-missing-imports", "--follow-imports=silent", "--cache-dir", f"{tmp}/mypy", *paths],
        opt_level="3", group_name="pipelines.backload.hl7._native", target_dir=f"{tmp}/c",
    ),
)
"""


def digest(source: Path = SOURCE) -> str:
    """What a build is made from: the modules' text and the interpreter's extension ABI."""
    h = hashlib.sha256(f"{sys.implementation.cache_tag}\0{EXTENSION_SUFFIXES[0]}\0".encode())
    for name in MODULES:
        h.update(name.encode() + b"\0" + (source / f"{name}.py").read_bytes() + b"\0")
    return h.hexdigest()[:24]


def built(store: Path = STORE, source: Path = SOURCE) -> Path | None:
    """The folder holding a build of exactly these sources, if there is one."""
    try:
        folder = store / digest(source)
    except OSError:  # the sources are not files here (a zipped install): no build applies
        return None
    return folder if folder.is_dir() else None


def use(package_path: list[str], store: Path = STORE, source: Path = SOURCE) -> bool:
    """Put a matching build first on the package's path (imports of these modules then load it); a build of
    other source text is never used, so an edited module runs as written."""
    if os.environ.get(OFF) == "0":
        return False
    folder = built(store, source)
    if folder is None:
        return False
    package_path.insert(0, str(folder))
    return True


def build(store: Path = STORE, source: Path = SOURCE) -> Path:
    """Compile the modules (mypyc, then the C compiler) unless a build of their current text exists; older
    builds are removed. Raises CalledProcessError when compiling fails (the source modules are used)."""
    import shutil  # here: an import of the package (every CLI start) needs none of these
    import subprocess
    import tempfile

    found = built(store, source)
    if found is not None:
        return found
    key = digest(source)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store, prefix=".building-") as tmp:
        work = Path(tmp)
        # A copy of exactly the text the key was taken from (an edit meanwhile cannot slip into the build).
        package = work / "src" / "pipelines" / "backload" / "hl7"
        package.mkdir(parents=True)
        for level in (package, package.parent, package.parent.parent):
            (level / "__init__.py").write_text("")
        for name in MODULES:
            shutil.copyfile(source / f"{name}.py", package / f"{name}.py")
        if digest(package) != key:
            raise RuntimeError("the HL7 builder modules changed while being compiled; run the build again")
        out = work / "out"
        subprocess.run(  # noqa: S603 - this interpreter, a fixed script, paths of our own
            [sys.executable, "-c", _SETUP, str(work / "src"), str(out), str(work / "tmp"), *MODULES],
            cwd=work, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        ready = work / "ready"
        shutil.copytree(out / "pipelines" / "backload" / "hl7", ready)
        final = store / key
        try:
            os.replace(ready, final)  # whole or absent: a folder of this name is a complete build
        except OSError:
            if not final.is_dir():
                raise
            return final  # another process built the same sources meanwhile
    for old in store.iterdir():
        if old.name != key and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return final


def main() -> int:
    """Build (make setup runs it); never fails the setup."""
    import subprocess

    try:
        build()
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stdout", b"") or b""
        tail = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else [str(exc)]
        print(f"HL7 builders not compiled, the source modules run instead: {' '.join(tail)}", file=sys.stderr)
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
