"""The export formats: where each one's PTransform lives and the config keys it takes.

Data only (no Beam, no model code), so the CLI checks an export config before it imports any format;
a format's module is imported when the format is used (``pipelines.export``), and one whose module is
missing or broken is reported then, while the others still work. Each format's keys are prefixed with
its name. Their defaults and meanings live here, in the Options: configs/export.yaml and the README's
tables are generated from them (``python -m curate.config_docs --write``).
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
    "flava.mask_grid": Option(int, "patches per side of the model's image grid (FLAVA ViT-B/16 at 224 px: 14)", min=1,
                              default=14),
    "flava.mask_ratio": Option(float, "share of patches masked per image (BEiT: about 0.4)", min=0, max=1,
                               default=0.4),
    "flava.mask_min_patches": Option(int, "smallest masked block, in patches (BEiT's block-wise masking: 16)", min=1,
                                     default=16),
    "flava.mask_max_patches": Option(int, "largest masked block, in patches; null = no cap below the total",
                                     min=1, nullable=True, default=None),
    "flava.mask_min_aspect": Option(float, "smallest block aspect ratio (BEiT: 0.3, blocks within [0.3, 1/0.3])",
                                    min=0.01, max=1, default=0.3),
    "flava.mask_max_aspect": Option(float, "largest block aspect ratio; null = 1 / mask_min_aspect",
                                    min=1, nullable=True, default=None),
    "flava.seed": Option(int, "seed of the masks (each mask is a function of seed and key)", default=0),
    "flava.codebook": Option(str, "local FlavaImageCodebook folder (save_pretrained layout, e.g. "
                             "facebook/flava-image-codebook saved) for codes.npy; null = no codebook ids",
                             nullable=True, default=None),
    "flava.codebook_image_size": Option(int, "codebook input size in px; must be 8 x mask_grid (FLAVA: 112)", min=8,
                                        default=112),
    "flava.batch_size": Option(int, "images per codebook call", min=1, default=32),
    "flava.device": Option(str, "codebook device; auto picks CUDA when available", choices=("auto", "cpu", "cuda"),
                           default="auto"),
    "flava.unimodal": Option(bool, "also write image_only/ and text_only/ from laion_filter's dropped samples",
                             default=True),
    "flava.run_dir": Option(str, "the laion_filter output folder whose decisions feed the unimodal streams; "
                            "null = the folder above the input shards", nullable=True, default=None),
    "flava.samples_per_shard": Option(int, "samples per image_only / text_only tar", min=1, default=1000),
}

CHAMELEON_SCHEMA: Schema = {
    "chameleon.vq_model": Option(str, "local folder of a Chameleon or Emu3 VQ-VAE (alone or inside the whole "
                                      "model's checkpoint); required for this format", nullable=True, default=None),
    "chameleon.tokenizer": Option(str, "local folder of a transformers text tokenizer (e.g. the model's own); "
                                       "required for this format", nullable=True, default=None),
    "chameleon.seq_len": Option(int, "tokens per packed training sequence (Chameleon's context length: 4096)", min=8,
                                default=4096),
    "chameleon.image_first_ratio": Option(float, "share of samples written image-first (captioning); the "
                                                 "rest caption-first (generation)", min=0.0, max=1.0, default=0.5),
    "chameleon.seed": Option(int, "seed of the per-key caption-first / image-first choice", default=0),
    "chameleon.batch_size": Option(int, "images per VQ encoder call", min=1, default=16),
    "chameleon.device": Option(str, "auto (CUDA when available), cpu, cuda or cuda:N", default="auto"),
    "chameleon.precision": Option(str, "VQ encoder precision; auto = fp32 (TF32 convolutions on CUDA); bf16 is "
                                            "faster on GPUs, its codebook search may pick other codes at near ties",
                                  choices=("auto", "fp32", "bf16", "fp16"), default="auto"),
    "chameleon.resolution": Option(int, "image side when the VQ folder has no preprocessor_config.json "
                                        "(null: the VQ config's resolution, else 512)", min=8, nullable=True,
                                  default=None),
}

# LLaVA's brief-description instructions (the human turns of LLaVA-Pretrain's 558k set).
LLAVA_PROMPTS = [
    "<image>\nDescribe the image concisely.",
    "<image>\nProvide a brief description of the given image.",
    "<image>\nOffer a succinct explanation of the picture presented.",
    "<image>\nSummarize the visual content of the image.",
    "<image>\nGive a short and clear explanation of the subsequent image.",
    "<image>\nShare a concise interpretation of the image provided.",
    "<image>\nPresent a compact description of the photo's key features.",
    "<image>\nRelay a brief, clear account of the picture shown.",
    "<image>\nRender a clear and concise summary of the photo.",
    "<image>\nWrite a terse but informative summary of the picture.",
    "<image>\nCreate a compact narrative representing the image presented.",
]

LLAVA_SCHEMA: Schema = {
    "llava.prompts": Option(list, "human turns, one picked per sample; each holds <image> once "
                            "(default: LLaVA's brief-description instructions, LLaVA-Pretrain's 558k set)",
                            default=LLAVA_PROMPTS),
}

# Every format's keys (contrastive and blip2 take none).
SCHEMA: Schema = {**FLAVA_SCHEMA, **CHAMELEON_SCHEMA, **LLAVA_SCHEMA}
# What each format's section of configs/export.yaml is for (its comment there).
SECTIONS = {
    "flava": "FLAVA: pairs with block masks (+ codebook ids), image-only and text-only streams",
    "llava": "LLaVA pretraining JSON: one human turn per sample, picked by key",
    "chameleon": "Chameleon-style token streams (curate/exports/chameleon.py)",
}
