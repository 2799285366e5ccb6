"""The export formats: where each one's PTransform lives and the config keys it takes.

Data only (no Beam, no model code), so the CLI checks an export config before it imports any format;
a format's module is imported when the format is used (``pipelines.export``), and one whose module is
missing or broken is reported then, while the others still work. Each format's keys are prefixed with
its name; configs/export.yaml gives their defaults.
"""
from __future__ import annotations

from curate.config import Option, Schema

# name -> (module, class)
FORMATS = {
    "contrastive": ("curate.exports.contrastive", "ContrastiveExport"),
    "flava": ("curate.exports.flava", "FlavaExport"),
    "chameleon": ("curate.exports.chameleon", "ChameleonExport"),
    "llava": ("curate.exports.llava", "LlavaExport"),
    "blip2": ("curate.exports.blip2", "Blip2Export"),
}

FLAVA_SCHEMA: Schema = {
    "flava.mask_grid": Option(int, "patches per side of the model's image grid (FLAVA ViT-B/16 at 224 px: 14)", min=1),
    "flava.mask_ratio": Option(float, "share of patches masked per image (BEiT: about 0.4)", min=0, max=1),
    "flava.mask_min_patches": Option(int, "smallest masked block, in patches (BEiT: 16)", min=1),
    "flava.mask_max_patches": Option(int, "largest masked block, in patches; null = no cap below the total",
                                     min=1, nullable=True),
    "flava.mask_min_aspect": Option(float, "smallest block aspect ratio (BEiT: 0.3)", min=0.01, max=1),
    "flava.mask_max_aspect": Option(float, "largest block aspect ratio; null = 1 / mask_min_aspect",
                                    min=1, nullable=True),
    "flava.seed": Option(int, "seed of the masks (each mask is a function of seed and key)"),
    "flava.codebook": Option(str, "local FlavaImageCodebook folder (save_pretrained layout) for codes.npy; "
                             "null = no codebook ids", nullable=True),
    "flava.codebook_image_size": Option(int, "codebook input size in px; must be 8 x mask_grid (FLAVA: 112)", min=8),
    "flava.batch_size": Option(int, "images per codebook call", min=1),
    "flava.device": Option(str, "codebook device; auto picks CUDA when available", choices=("auto", "cpu", "cuda")),
    "flava.unimodal": Option(bool, "also write image_only/ and text_only/ from laion_filter's dropped samples"),
    "flava.run_dir": Option(str, "the laion_filter output folder whose decisions feed the unimodal streams; "
                            "null = the folder above the input shards", nullable=True),
    "flava.samples_per_shard": Option(int, "samples per image_only / text_only tar", min=1),
}

CHAMELEON_SCHEMA: Schema = {
    "chameleon.vq_model": Option(str, "local folder of a Chameleon or Emu3 VQ-VAE (alone or inside the whole "
                                      "model's checkpoint); required for this format", nullable=True),
    "chameleon.tokenizer": Option(str, "local folder of a transformers text tokenizer (e.g. the model's own); "
                                       "required for this format", nullable=True),
    "chameleon.seq_len": Option(int, "tokens per packed training sequence", min=8),
    "chameleon.image_first_ratio": Option(float, "share of samples written image-first (captioning); the "
                                                 "rest caption-first (generation)", min=0.0, max=1.0),
    "chameleon.seed": Option(int, "seed of the per-key caption-first / image-first choice"),
    "chameleon.batch_size": Option(int, "images per VQ encoder call", min=1),
    "chameleon.device": Option(str, "auto (CUDA when available), cpu, cuda or cuda:N"),
    "chameleon.precision": Option(str, "VQ encoder precision; auto = fp32 (TF32 convolutions on CUDA); bf16 is "
                                            "faster on GPUs, its codebook search may pick other codes at near ties",
                                  choices=("auto", "fp32", "bf16", "fp16")),
    "chameleon.resolution": Option(int, "image side when the VQ folder has no preprocessor_config.json "
                                        "(null: the VQ config's resolution, else 512)", min=8, nullable=True),
}

LLAVA_SCHEMA: Schema = {
    "llava.prompts": Option(list, "human turns, one picked per sample; each holds <image> once "
                            "(default: LLaVA's brief-description instructions)"),
}

# Every format's keys (contrastive and blip2 take none).
SCHEMA: Schema = {**FLAVA_SCHEMA, **CHAMELEON_SCHEMA, **LLAVA_SCHEMA}
