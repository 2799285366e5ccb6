"""VQ image tokenization (images/s) and sequence packing (tokens/s) for the Chameleon-style export.

    python benchmarks/vq_tokenize.py                                   # tiny VQ-VAE, CPU
    python benchmarks/vq_tokenize.py --preset chameleon --batch 1 --warmup 0 --seconds 0  # CPU smoke test
    python benchmarks/vq_tokenize.py --device cuda --preset chameleon --batch 64 --seconds 20 --precision fp32,bf16

Presets: ``tiny`` (curate.models.vq.tiny_config, 64 px, 8x8 codes) and ``chameleon``
(ChameleonVQVAEConfig's real-size defaults: 512 px, 8,192 codes, 32x32 = 1,024 codes per image),
random weights (throughput does not depend on them). The model is saved with save_pretrained and
loaded back through VQTokenizer.from_pretrained, the exporter's own path. Rows:

- VQ encode: random pixel tensors already preprocessed (host-to-device copy and the codes' way
  back included): the VQ-VAE alone.
- processor + VQ encode: 256x256 PIL images through the checkpoint's image processor, then the
  encoder, as the exporter runs it (JPEG decoding excluded; skipped when PIL is missing).
- documents + packing: caption ids + the preset's codes per image -> documents -> 4,096-token
  sequences (curate.exports.packing), tokens/s.

Imports: torch, transformers, numpy and this repository only (runs on a bare GPU machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from curate.exports import packing
from curate.models import vq


def has_pil() -> bool:
    try:
        import PIL  # noqa: F401
        return True
    except ImportError:
        return False


def preset_config(preset: str, family: str):
    if preset == "tiny":
        return vq.tiny_config(family), 64
    import transformers
    if family != "chameleon":
        raise SystemExit("--preset chameleon is Chameleon's VQ-VAE; use --family chameleon")
    return transformers.ChameleonVQVAEConfig(), 512


def time_encode(tok: vq.VQTokenizer, resolution: int, batch: int, seconds: float,
                warmup: int) -> tuple[int, float, int, int]:
    """(images, seconds, codes per image, batch) over as many batches as fit in ``seconds`` (at
    least one). A batch that runs out of CUDA memory is halved and the measurement restarted."""
    pixels = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    if tok.device.type == "cuda":
        pixels = pixels.pin_memory()
    try:
        grids = None
        for _ in range(warmup):
            grids = tok.encode_pixels(pixels)
        images, t0 = 0, time.perf_counter()
        while True:
            grids = tok.encode_pixels(pixels)   # returns CPU numpy: includes the device sync
            images += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return images, elapsed, int(grids[0].size), batch
    except torch.cuda.OutOfMemoryError:
        if batch == 1:
            raise
        del pixels, grids
        torch.cuda.empty_cache()
        print(f"batch {batch} ran out of CUDA memory; trying {batch // 2}")
        return time_encode(tok, resolution, batch // 2, seconds, warmup)


def time_from_images(tok: vq.VQTokenizer, batch: int, seconds: float) -> tuple[int, float] | None:
    """(images, seconds) from decoded 256x256 PIL images: the checkpoint's processor + encode, as
    the exporter runs it. None when PIL is not installed."""
    if not has_pil():
        return None
    from PIL import Image
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(batch)]
    count, t0 = 0, time.perf_counter()
    while True:
        tok.encode_images(images, batch)
        count += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return count, elapsed


def time_packing(codes_per_image: int, seconds: float, seq_len: int = 4096) -> tuple[int, float]:
    """Tokens/s of building documents (caption ids + code grid -> ids) and packing them."""
    layout = packing.TokenLayout(text_vocab=65536, codebook=8192, bos=0, tokenizer_eod=2)
    rng = np.random.default_rng(0)
    inputs = [(f"{i:09d}", rng.integers(3, 65536, size=int(rng.integers(5, 60))),
               rng.integers(0, 8192, size=codes_per_image, dtype=np.int32)) for i in range(2000)]
    tokens, t0 = 0, time.perf_counter()
    while True:
        docs = ((key, packing.build_document(text, codes, layout, i % 2 == 0), i % 2 == 0)
                for i, (key, text, codes) in enumerate(inputs))
        for seq in packing.pack(docs, seq_len, layout.pad):
            tokens += seq.used
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return tokens, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=("tiny", "chameleon"), default="tiny")
    ap.add_argument("--family", choices=vq.FAMILIES, default="chameleon", help="for --preset tiny")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--precision", default="auto",
                    help="comma-separated, one row each: auto (fp32) | fp32 | bf16 | fp16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="time budget per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; rerun with --device cpu")
        return 1
    config, resolution = preset_config(args.preset, args.family)
    rows, codes, dev = [], 0, "CPU"
    with tempfile.TemporaryDirectory() as folder:
        vq.save_random(folder, config, resolution=resolution if has_pil() else None)
        for i, precision in enumerate(args.precision.split(",")):
            tok = vq.VQTokenizer.from_pretrained(folder, device=args.device, precision=precision)
            name = str(tok.dtype).replace("torch.", "")
            params = sum(p.numel() for p in tok.model.parameters()) / 1e6
            images, secs, codes, batch = time_encode(tok, resolution, args.batch, args.seconds, args.warmup)
            rows.append(f"| VQ encode | {tok.family} {args.preset} ({params:.1f}M params, {tok.codebook_size} codes) "
                        f"| {resolution}x{resolution} -> {codes} codes | {name} | {batch} | {images} images | "
                        f"{secs:.2f} | {images / secs:,.2f} images/s |")
            # The processor runs on CPU whatever the device: measured once, with the first precision.
            from_images = time_from_images(tok, args.batch, args.seconds) if i == 0 else None
            if from_images:
                n, s = from_images
                rows.append(f"| processor + VQ encode | same | 256x256 PIL images | {name} | {args.batch} | "
                            f"{n} images | {s:.2f} | {n / s:,.2f} images/s |")
            dev = (torch.cuda.get_device_name(tok.device) if tok.device.type == "cuda"
                   else f"CPU, {torch.get_num_threads()} threads")
            del tok
    tokens, psecs = time_packing(codes, min(args.seconds, 5.0))
    rows.append(f"| documents + packing (next-fit, 4096) | caption + {codes} image codes per document | - | - | - | "
                f"{tokens:,} tokens | {psecs:.2f} | {tokens / psecs:,.0f} tokens/s |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device: {dev}; load average {load:.2f}; torch {torch.__version__}")
    print("| measure | model | input | precision | batch | count | seconds | rate |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
