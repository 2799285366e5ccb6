"""What each pipeline is, takes and writes: importable without Beam, torch or open_clip.

The CLI checks a command against these (config keys and values, flags, the output folder) before
it imports the pipeline, so a mistake is reported in a fraction of a second and before any work.
Each pipeline module takes its SCHEMA from here; config defaults live in configs/NAME.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass

from curate.filters.dedup import NEAR_METHODS
from curate.filters.select import DEFAULT_LANGUAGE_KEY
from curate.filters.semdedup import KEEP_MODES

from curate.config import Option, Schema
from curate.exports.formats import FORMATS
from curate.exports.formats import SCHEMA as FORMAT_SCHEMA

# Parts shared by several pipelines.
INPUT_SCHEMA: Schema = {
    "input": Option(str, "raw shards: a folder, a glob or one .tar, .tar.gz or .tgz; null = the built-in sample corpus",
                    nullable=True),
    "output": Option(str, "output folder"),
    "sample_corpus.samples": Option(int, "size of the built-in sample corpus", min=1),
    "sample_corpus.seed": Option(int, "seed of the built-in sample corpus"),
    "sample_corpus.noise": Option(float, "fraction of noisy samples in the built-in corpus", min=0, max=1),
}
SCORER_SCHEMA: Schema = {
    "filters.max_image_pixels": Option(int, "refuse images with more pixels (decompression bombs)", min=1),
    "select.detect_language": Option(bool, "detect the caption's language (py3langid) when the sample's json "
                                     "has none; recorded in the decisions and used by mode language"),
    "scorer.model": Option(str, "open_clip model name (open_clip.list_models()) or curate-demo-64"),
    "scorer.pretrained": Option(str, "'demo', an open_clip pretrained tag, a local checkpoint path, or 'random'"),
    "scorer.batch_size": Option(int, "images per model call", min=1),
    "scorer.device": Option(str, "auto picks CUDA when available", choices=("auto", "cpu", "cuda")),
    "scorer.precision": Option(str, "autocast on GPU; CPU runs fp32", choices=("auto", "fp32", "fp16", "bf16")),
}
DEDUP_SCHEMA: Schema = {
    "dedup.near_method": Option(str, "the near-duplicate signal: phash (perceptual-hash distance, a copy signal, "
                                "no model), clip (image-embedding cosine, as good as the scorer), both (both "
                                "agree), either (one of them)", choices=NEAR_METHODS),
    "dedup.phash_max_distance": Option(int, "perceptual-hash Hamming distance (of 64 bits) at or below which "
                                       "two images are near duplicates", min=0, max=64),
    "dedup.phash_assignments": Option(int, "clusters a hash may join when hashes are searched by clusters "
                                      "(above near_flat_max samples)", min=1, max=8),
    "dedup.phash_border": Option(float, "a hash joins a further cluster when its centroid similarity is within "
                                 "this of the nearest one's (hash vectors: cosine = 1 - distance/32)", min=0, max=2),
    "dedup.url_caption": Option(bool, "drop samples whose normalised (url, caption) pair repeats"),
    "dedup.near_flat_max": Option(int, "up to this many samples, one exact search over all pairs; above, "
                                  "k-means clusters searched one by one", min=2),
    "dedup.near_assignments": Option(int, "clusters an embedding may join (its nearest, then those within "
                                     "near_border); 2 catches pairs across a border", min=1, max=8),
    "dedup.near_border": Option(float, "join a further cluster when its centroid similarity is within this "
                                "of the nearest one's", min=0, max=2),
    "dedup.semdedup.enabled": Option(bool, "SemDeDup after near dedup: within each k-means cluster drop "
                                     "samples closer than 1 - eps to a kept one"),
    "dedup.semdedup.eps": Option(float, "SemDeDup's eps (used when target_fraction is null)", min=0, max=1),
    "dedup.semdedup.target_fraction": Option(float, "pick eps (0.0025 steps up to 0.2) so that at most this "
                                             "share of SemDeDup's input is kept; null = use eps",
                                             min=0, max=1, nullable=True),
    "dedup.semdedup.keep": Option(str, "which member of a group is offered a place first: hard (far from the "
                                  "centroid), easy (close to it), random (seeded)", choices=KEEP_MODES),
    "dedup.semdedup.seed": Option(int, "seed of keep: random", min=0),
    "decontaminate.eval_set": Option(str, "evaluation images to keep out: a .npy of embeddings, an embeddings "
                                     "folder (clip-retrieval layout) or a folder of images; null = off",
                                     nullable=True),
    "decontaminate.threshold": Option(float, "image cosine to an evaluation image at or above which a "
                                      "sample is dropped", min=0, max=1),
}
INGEST_SCHEMA: Schema = {
    "ingest.url_col": Option(str, "column holding the image URL"),
    "ingest.caption_col": Option(str, "column holding the caption; null = none", nullable=True),
    "ingest.samples_per_shard": Option(int, "input rows per raw shard", min=1),
    "ingest.thread_count": Option(int, "download threads per worker process", min=1),
    "ingest.timeout": Option(float, "seconds a connect or a read may wait", min=0.1),
    "ingest.retries": Option(int, "extra attempts for a failed download", min=0),
    "ingest.image_size": Option(int, "target size of the resize (px)", min=1),
    "ingest.resize_mode": Option(str, "img2dataset's resize mode", choices=(
        "no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")),
    "ingest.resize_only_if_bigger": Option(bool, "never upscale"),
    "ingest.min_image_size": Option(int, "refuse images whose shorter side is below this (px)", min=0),
    "ingest.max_aspect_ratio": Option(float, "refuse images with a larger long/short ratio; null = any",
                                      min=1, nullable=True),
    "ingest.max_image_pixels": Option(int, "refuse images declaring more pixels, before decoding (at most "
                                      "2**30, OpenCV's own decoding limit)", min=1, max=2 ** 30),
    "ingest.encode_format": Option(str, "format of the stored image", choices=("jpg", "png", "webp")),
    "ingest.encode_quality": Option(int, "jpg/webp quality (0-100); png compression (0-9)", min=0, max=100),
    "ingest.compute_hash": Option(str, "hash of the downloaded bytes in each row", choices=("md5", "sha256", "sha512"),
                                  nullable=True),
    "ingest.extract_exif": Option(bool, "keep the image's EXIF as a json string"),
    "ingest.user_agent_token": Option(str, "token added to the User-Agent; X-Robots-Tag lines naming it apply",
                                      nullable=True),
    "ingest.disallowed_header_directives": Option(str, "X-Robots-Tag directives honoured as an opt-out "
                                                  "(comma-separated; empty = ignore the header)"),
    "ingest.max_image_bytes": Option(int, "refuse responses larger than this", min=1),
    "ingest.deadline_seconds": Option(float, "a whole response must arrive within this", min=0.1),
    "ingest.allow_networks": Option(str, "non-public networks that may be fetched (CIDRs, comma-separated), "
                                    "e.g. 10.0.0.0/8 for an intranet; empty = public addresses only"),
    "ingest.check_content_type": Option(bool, "refuse responses whose Content-Type is not an image"),
    "ingest.retry_failed": Option(bool, "download again only the failed rows of finished shards (same output)"),
}

LAION_FILTER_SCHEMA: Schema = {
    **INPUT_SCHEMA,
    "scores": Option(str, "reuse the stored scores of this score/laion_filter output folder: no model is "
                     "loaded; null = score now", nullable=True),
    "save_embeddings": Option(bool, "write OUT/embeddings (clip-retrieval layout) for later re-selection"),
    "filters.min_image_size": Option(int, "drop images whose shorter side is below this (px)", min=0),
    "filters.max_aspect_ratio": Option(float, "drop images whose long/short side ratio exceeds this", min=1),
    "filters.min_caption_words": Option(int, "drop captions with fewer words (scripts without spaces: "
                                      "letters per word, see filters/basic.py)", min=0),
    "filters.min_caption_chars": Option(int, "drop captions with fewer characters", min=0),
    "filters.boilerplate_captions": Option(bool, "drop file-name and web-boilerplate captions"),
    **SCORER_SCHEMA,
    "select.mode": Option(str, "threshold: absolute cosine (LAION); language: per-language thresholds; "
                          "fraction: top fraction of the corpus (DataComp)", choices=("threshold", "language", "fraction")),
    "select.clip_threshold": Option(float, "mode threshold: drop pairs whose image-text cosine is below this",
                                    min=-1, max=1),
    "select.language_thresholds": Option(dict, "mode language: threshold per language code; 'default' (required) for "
                                         "the others and for unknown languages", min=-1, max=1,
                                         required=(DEFAULT_LANGUAGE_KEY,)),
    "select.fraction": Option(float, "mode fraction: keep this share of the scored, filtered corpus",
                              min=0, max=1),
    "dedup.exact": Option(bool, "drop samples whose image bytes repeat (sha256)"),
    "dedup.near": Option(bool, "drop near-duplicate images (by dedup.near_method)"),
    "dedup.near_threshold": Option(float, "image cosine at or above which two images are near duplicates "
                                   "(near_method clip, both, either)",
                                   min=0, max=1),
    **DEDUP_SCHEMA,
    "shards.samples_per_shard": Option(int, "samples per curated tar (the last may hold fewer)", min=1),
    "exports": Option(list, "family exports of the curated shards, each into OUT/exports/<format> "
                      "(settings: configs/export.yaml)", choices=tuple(FORMATS)),
    "exports_config": Option(str, "YAML overriding configs/export.yaml's per-format settings for `exports`", nullable=True),
    **INGEST_SCHEMA,  # used when input is a URL table: downloaded into OUT/raw first
}
SCORE_SCHEMA: Schema = {**INPUT_SCHEMA, **SCORER_SCHEMA}
EXPORT_SCHEMA: Schema = {
    "input": Option(str, "curated shards: a laion_filter OUT/shards folder, a glob or a .tar"),
    "output": Option(str, "export folder: one subfolder per format"),
    "formats": Option(list, "export formats to write, each into its own folder", choices=tuple(FORMATS)),
    **FORMAT_SCHEMA,
}
INGEST_PIPELINE_SCHEMA: Schema = {
    "input": Option(str, "URL table: a .parquet/.csv/.tsv/.jsonl file (.gz allowed) or a folder of them",
                    nullable=True),
    "output": Option(str, "output folder"),
    **INGEST_SCHEMA,
}


@dataclass(frozen=True)
class PipelineSpec:
    module: str                # the module with build(pipeline, config) and the pipeline's Beam code
    description: str
    schema: Schema
    # What the pipeline may write in its output folder; --overwrite removes these and nothing else
    # (raw/ only for a run that ingests a URL table into it).
    outputs: tuple[str, ...]
    # Config keys naming paths the pipeline reads: --overwrite never removes what they point into.
    reads: tuple[str, ...] = ("input",)


RAW = "raw"  # OUT/raw: the raw shards ingested from a URL table
PIPELINES = {
    "laion_filter": PipelineSpec(
        module="curate.pipelines.laion_filter",
        description="basic filters, CLIP score selection, exact and near-duplicate removal, curated shards",
        schema=LAION_FILTER_SCHEMA,
        outputs=(RAW, "embeddings", "shards", "exports", "decisions", "report.json"),
        reads=("input", "scores", "decontaminate.eval_set", "exports_config")),
    "score": PipelineSpec(
        module="curate.pipelines.score",
        description="CLIP image and text embeddings + metadata in clip-retrieval's layout (reused by selection)",
        schema=SCORE_SCHEMA,
        outputs=("embeddings", "decisions", "report.json")),
    "export": PipelineSpec(
        module="curate.pipelines.export",
        description="curated shards -> CLIP WebDataset, FLAVA masked/unimodal shards, Chameleon tokens, "
                    "LLaVA JSON, BLIP-2 shards",
        schema=EXPORT_SCHEMA,
        outputs=(*FORMATS, "decisions", "report.json"),
        reads=("input", "flava.run_dir", "flava.codebook", "chameleon.vq_model", "chameleon.tokenizer")),
    "ingest": PipelineSpec(
        module="curate.pipelines.ingest",
        description="URL + caption table (parquet, csv, tsv, jsonl) -> raw WebDataset shards, via img2dataset",
        schema=INGEST_PIPELINE_SCHEMA,
        outputs=(RAW, "decisions", "report.json")),
}
# Every name some pipeline writes in its output folder.
ALL_OUTPUTS = tuple(sorted({name for spec in PIPELINES.values() for name in spec.outputs}))
