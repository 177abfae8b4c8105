"""The device CLI: check an artifact, embed images or sentences, build an index, answer queries. No torch.

Shipped in every artifact folder as ``monocon_runtime/cli.py``, started by the folder's ``monocon_device.py``
(``python monocon_device.py check``); where monocon-edge is installed, ``python -m monocon_edge.device.cli``.
The artifact defaults to the folder of the launching ``monocon_device.py``.

    python monocon_device.py check [ARTIFACT]
    python monocon_device.py index [ARTIFACT] --images photos/ --out gallery.npz [--codes int8] [--precision int8]
    python monocon_device.py index [ARTIFACT] --texts corpus.txt --out corpus.npz
    python monocon_device.py query [ARTIFACT] --index gallery.npz --images queries/ [--top-k 5]
    python monocon_device.py embed [ARTIFACT] --texts sentences.txt --out emb.npy
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import runtime
from .atomic import write_atomic
from .errors import MonoconError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_images(source: str, model: runtime.Embedder) -> tuple[np.ndarray, list[str]]:
    """Return uint8 (N, H, W, C) images and their names from a folder of image files, or an .npy / .npz array."""
    path = Path(source)
    if path.suffix in (".npy", ".npz") and path.is_file():
        arr = np.load(path, allow_pickle=False)
        images = arr["images"] if path.suffix == ".npz" else arr
        return images, [f"{path.name}[{i}]" for i in range(len(images))]
    if not path.is_dir():
        raise MonoconError(f"--images must be a folder of image files, or an .npy/.npz array: {source}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MonoconError(f"no image files in {source}")
    try:
        from PIL import Image
    except ImportError:
        raise MonoconError("reading image files needs Pillow (pip install pillow), or pass an .npy array") from None
    c, h, w = model.input_spec["shape"]
    mode = "RGB" if c == 3 else "L"
    images = []
    for f in files:
        with Image.open(f) as im:
            # The model was trained at this size: resize, as the training data was stored.
            images.append(np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR), dtype=np.uint8))
    arr = np.stack(images)
    return (arr[..., None] if arr.ndim == 3 else arr), [f.name for f in files]


def read_texts(source: str) -> tuple[list[str], list[str]]:
    """Return the non-empty lines of a UTF-8 file and their ids (line numbers)."""
    path = Path(source)
    if not path.is_file():
        raise MonoconError(f"--texts file not found: {source}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    kept = [(i + 1, t) for i, t in enumerate(lines) if t]
    return [t for _, t in kept], [f"line {i}" for i, _ in kept]


def _inputs(args: argparse.Namespace, model: runtime.Embedder):
    if model.modality == "vision":
        if not args.images:
            raise MonoconError("this is a vision artifact: pass --images")
        return read_images(args.images, model)
    if not args.texts:
        raise MonoconError("this is a text artifact: pass --texts FILE (one sentence per line)")
    return read_texts(args.texts)


def _default_artifact(home: str | os.PathLike | None) -> str:
    """Return ``home`` (the launcher's folder) when it is an artifact, else the current folder."""
    if home is not None and (Path(home) / "manifest.json").is_file():
        return str(home)
    return "."


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr (exit 2), like every other input error here."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: MESSAGE (see PROG --help)`` and exit 2; never returns."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None, home: str | os.PathLike | None = None) -> int:
    """Run one device command; return the exit status (errors are one line on stderr).

    ``home``: the folder of the launching monocon_device.py, the artifact when none is given.
    """
    parser = _OneLineParser(prog="monocon_device.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "embed", "index", "query"])
    parser.add_argument("artifact", nargs="?", default=None,
                        help="artifact folder (default: the folder monocon_device.py is in, else .)")
    parser.add_argument("--images", help="folder of images, or .npy/.npz uint8 (N, H, W, C)")
    parser.add_argument("--texts", help="UTF-8 file, one sentence per line")
    parser.add_argument("--precision", default="best", choices=["fp32", "int8", "best"])
    parser.add_argument("--codes", default="int8", choices=["int8", "float32"], help="how the index stores vectors")
    parser.add_argument("--index", help="index file (.npz) to query")
    parser.add_argument("--out", help="where embed / index writes")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.artifact is None:
        args.artifact = _default_artifact(home)
    try:
        model = runtime.load(args.artifact, args.precision, threads=args.threads)
        if args.command == "check":
            others = [p for p in model.manifest["models"] if p != model.precision]
            for precision in others:  # every graph loads, not only the one asked for
                runtime.load(args.artifact, precision, threads=args.threads)
            print(f"ok: {args.artifact} ({model.modality}, {', '.join(sorted(model.manifest['models']))}, "
                  f"{model.dims} dims): manifest sealed, {len(model.manifest['files'])} files match their sha256, "
                  "every graph loads")
            return 0
        inputs, names = _inputs(args, model)
        emb = model.embed(inputs)
        if args.command == "embed":
            if not args.out:
                raise MonoconError("embed needs --out FILE.npy")
            write_atomic(args.out, lambda fh: np.save(fh, emb))
            print(f"{emb.shape[0]} embeddings ({emb.shape[1]} dims) -> {args.out}")
        elif args.command == "index":
            if not args.out:
                raise MonoconError("index needs --out FILE.npz")
            index = runtime.Index.for_model(model, codes=args.codes)
            index.add(emb, ids=names)
            index.save(args.out)
            print(f"index of {len(index)} {args.codes} vectors -> {args.out}")
        else:
            if not args.index:
                raise MonoconError("query needs --index FILE.npz")
            index = runtime.Index.load(args.index)
            if index.fingerprint and index.fingerprint != model.fingerprint:
                raise MonoconError(f"{args.index} was built with another model than {args.artifact}")
            ids, scores = index.search(emb, top_k=args.top_k)
            for name, row_ids, row_scores in zip(names, ids, scores):
                hits = ", ".join(f"{i} ({s:.3f})" for i, s in zip(row_ids, row_scores))
                print(f"{name}: {hits}")
        return 0
    except MonoconError as exc:  # ArtifactError and RuntimeInputError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:  # unreadable or malformed input files
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
