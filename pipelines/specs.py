"""What each pipeline is, takes and writes: importable without Beam, torch or open_clip.

The CLI checks a command against these (config keys and values, flags, the output folder) before
it imports the pipeline, so a mistake is reported in a fraction of a second and before any work.
Each pipeline module takes its SCHEMA from here. Every key's default and meaning live here too, in
its Option (the export formats' in curate/exports/formats.py): configs/NAME.yaml and the README's key
tables are generated from them by ``python -m curate.config_docs --write``, and a test fails when
they drift.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from curate.filters.balance import CAP_RULES, UNMATCHED_POLICIES
from curate.filters.dedup import NEAR_METHODS
from curate.filters.image import PIL_DEFAULT_MAX_PIXELS
from curate.filters.select import DEFAULT_LANGUAGE_KEY
from curate.filters.semdedup import KEEP_MODES

from curate.config import Option, Schema
from curate.exports.formats import FORMATS
from curate.exports.formats import SCHEMA as FORMAT_SCHEMA
from curate.exports.formats import SECTIONS as FORMAT_SECTIONS


def _output(pipeline: str, help: str = "output folder") -> Option:
    """The output folder's Option: every pipeline writes to curate-out/NAME unless told otherwise."""
    return Option(str, help, default=f"curate-out/{pipeline}")


# Parts shared by several pipelines.
INPUT_SCHEMA: Schema = {
    "input": Option(str, "raw shards: a folder, a glob or one .tar, .tar.gz or .tgz; null = the built-in sample corpus",
                    nullable=True, default=None),
}
SAMPLE_CORPUS_SCHEMA: Schema = {
    "sample_corpus.samples": Option(int, "size of the built-in sample corpus", min=1, default=2000),
    "sample_corpus.seed": Option(int, "seed of the built-in sample corpus", default=0),
    "sample_corpus.noise": Option(float, "fraction of noisy samples in the built-in corpus", min=0, max=1,
                                  default=0.3),
    "sample_corpus.mix": Option(str, "default: 5 languages, every concept equally often; skewed: the 12 "
                                "metadata languages with a long tail of languages and concepts (curate/synth.py)",
                                choices=("default", "skewed"), default="default"),
    "sample_corpus.stamped": Option(float, "share of the would-be clean samples that get a text watermark stamped "
                                    "over the scene (ground-truth kind stamped; something a probe can learn); 0 "
                                    "leaves the corpus byte for byte as without it", min=0, max=1, default=0.0),
}
SCORER_SCHEMA: Schema = {
    "filters.max_image_pixels": Option(int, "refuse images with more pixels (decompression bombs), checked on the "
                                       "header when decoding; the default is PIL's own limit", min=1,
                                       default=PIL_DEFAULT_MAX_PIXELS),
    "select.detect_language": Option(bool, "detect the caption's language (py3langid) when the sample's json "
                                     "has none; recorded in the decisions and used by mode language", default=True),
    "scorer.model": Option(str, "open_clip model name (open_clip.list_models(), e.g. ViT-B-32) or curate-demo-64",
                           default="curate-demo-64"),
    "scorer.pretrained": Option(str, "'demo', an open_clip pretrained tag (e.g. laion2b_s34b_b79k), a local "
                                "checkpoint path, or 'random'", default="demo"),
    "scorer.batch_size": Option(int, "images per model call", min=1, default=64),
    "scorer.device": Option(str, "auto picks CUDA when available", choices=("auto", "cpu", "cuda"), default="auto"),
    "scorer.precision": Option(str, "autocast on GPU; CPU runs fp32", choices=("auto", "fp32", "fp16", "bf16"),
                               default="auto"),
    "scorer.decode": Option(str, "cpu: decode every image at full size; cpu_fast: decode a JPEG at least twice "
                            "the model's input size at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), then "
                            "resize as cpu does (faster on web-sized images; scores and perceptual hashes "
                            "differ slightly, README \"The scorer\"); gpu: the CPU decodes at 1/2-1/8 scale "
                            "only to validate and hash, each batch's RGB JPEGs are decoded (nvJPEG on CUDA) and "
                            "resized on scorer.device, other images as cpu", choices=("cpu", "cpu_fast", "gpu"),
                            default="cpu"),
    "scorer.share_model": Option(bool, "one model per machine, in a process of its own that every local worker "
                                 "process sends its batches to (Beam's MultiProcessShared), instead of one "
                                 "copy per worker", default=False),
}
DEDUP_SCHEMA: Schema = {
    "dedup.near_method": Option(str, "the near-duplicate signal: phash (perceptual-hash distance, a copy signal, "
                                "no model), clip (image-embedding cosine, as good as the scorer), both (both "
                                "agree), either (one of them); README \"Deduplication\" measures them",
                                choices=NEAR_METHODS, default="both"),
    "dedup.phash_max_distance": Option(int, "perceptual-hash Hamming distance (of 64 bits) at or below which "
                                       "two images are near duplicates", min=0, max=64, default=10),
    "dedup.phash_assignments": Option(int, "clusters a hash may join when hashes are searched by clusters "
                                      "(above near_flat_max samples)", min=1, max=8, default=8),
    "dedup.phash_border": Option(float, "a hash joins a further cluster when its centroid similarity is within "
                                 "this of the nearest one's (hash vectors: cosine = 1 - distance/32); "
                                 "benchmarks/dedup_quality.py --hash-scale measures the recall", min=0, max=2,
                                 default=0.6),
    "dedup.url_caption": Option(bool, "drop samples whose normalised (url, caption) pair repeats", default=True),
    "dedup.near_flat_max": Option(int, "up to this many samples, one exact search over all pairs; above, "
                                  "k-means clusters searched one by one", min=2, default=50000),
    "dedup.near_assignments": Option(int, "clusters an embedding may join (its nearest, then those within "
                                     "near_border); 2 catches pairs across a border", min=1, max=8, default=2),
    "dedup.near_border": Option(float, "join a further cluster when its centroid similarity is within this "
                                "of the nearest one's", min=0, max=2, default=0.1),
    "dedup.semdedup.enabled": Option(bool, "SemDeDup after near dedup: within each k-means cluster drop "
                                     "samples closer than 1 - eps to a kept one", default=False),
    "dedup.semdedup.eps": Option(float, "SemDeDup's eps (used when target_fraction is null)", min=0, max=1,
                                 default=0.05),
    "dedup.semdedup.target_fraction": Option(float, "pick eps (0.0025 steps up to 0.2) so that at most this "
                                             "share of SemDeDup's input is kept (e.g. 0.5: at most half); "
                                             "null = use eps", min=0, max=1, nullable=True, default=None),
    "dedup.semdedup.keep": Option(str, "which member of a group is offered a place first: hard (far from the "
                                  "centroid), easy (close to it), random (seeded)", choices=KEEP_MODES,
                                  default="hard"),
    "dedup.semdedup.seed": Option(int, "seed of keep: random", min=0, default=0),
    "decontaminate.eval_set": Option(str, "evaluation images to keep out: a .npy of embeddings, an embeddings "
                                     "folder (clip-retrieval layout) or a folder of images; null = off",
                                     nullable=True, default=None),
    "decontaminate.threshold": Option(float, "image cosine to an evaluation image at or above which a "
                                      "sample is dropped (same scale as dedup.near_threshold)", min=0, max=1,
                                      default=0.96),
}
BALANCE_SCHEMA: Schema = {
    "balance.enabled": Option(bool, "MetaCLIP's balancing over metadata entries, after the basic filters and "
                              "before CLIP selection (README \"Balancing concepts and languages\")", default=False),
    "balance.metadata": Option(str, "folder of LANGUAGE.txt entry lists (one entry per line, # comments); null = "
                               "the shipped physical-concept lists (configs/metadata)", nullable=True, default=None),
    "balance.cap": Option(float, "t: an entry matched more often keeps each match with probability t/count "
                          "(MetaCLIP: 20,000 for 400M pairs); with caps tail_share, the reference language's t",
                          min=0, default=20000.0),
    "balance.caps": Option(str, "fixed: every language capped at balance.cap; tail_share: MetaCLIP 2, each "
                           "language's cap keeps the reference language's share of tail matches",
                           choices=CAP_RULES, default="fixed"),
    "balance.reference_language": Option(str, "caps tail_share: the language whose cap is balance.cap",
                                         default="en"),
    "balance.language_caps": Option(dict, "cap per metadata language (file stem, e.g. de), over the rule of "
                                    "balance.caps", min=0, default={}),
    "balance.unmatched": Option(str, "samples whose caption matches no entry: keep (unsampled) or drop "
                                "(MetaCLIP, whose 500k entries match most captions; the shipped lists are "
                                "physical concepts only)", choices=UNMATCHED_POLICIES, default="keep"),
    "balance.seed": Option(int, "seed of the draws (a hash of seed, key and entry: no worker or order "
                           "dependence)", min=0, default=0),
    "balance.coverage": Option(bool, "match captions and write the coverage audit (report.json) even when not "
                               "balancing", default=True),
}
# Block and opt-out lists (filters/blocklist.py): each list file is applied where its kind is first
# possible (README "Safety and consent").
LIST_FIELDS = ("path", "kind", "language", "max_distance")
LIST_TEXT_FIELDS = ("path", "kind", "language")
LISTS_SCHEMA: Schema = {
    "safety.blocklists": Option(list, "block lists, one file each: kind md5, sha1 or sha256 (image bytes), phash "
                                "(within max_distance bits, default 8), url, domain (and its subdomains) or term "
                                "(caption terms; language: the captions it serves, default all); reasons "
                                "blocklisted_<hash|phash|url|domain|term>", fields=LIST_FIELDS,
                                text_fields=LIST_TEXT_FIELDS, required=("path", "kind"), default=[]),
    "consent.optout": Option(list, "opt-out lists of the same kinds and keys, checked after the block lists; "
                             "reason opted_out_list", fields=LIST_FIELDS, text_fields=LIST_TEXT_FIELDS,
                             required=("path", "kind"), default=[]),
}
PROBES_SCHEMA: Schema = {
    "probes": Option(list, "learned filters on the stored embeddings (curate.probe heads), before score "
                     "selection: path (HEAD.pt, with HEAD.json when it has one), name (reason probe:<name>; "
                     "default: the sidecar's or the file's stem), threshold (default: the sidecar's; null = score "
                     "only), target (image, text or both; default: the sidecar's, else image), keep (above or "
                     "below; default: the sidecar's, else above)",
                     fields=("path", "name", "threshold", "target", "keep"),
                     text_fields=("path", "name", "target", "keep"), required=("path",), default=[]),
}
INGEST_SCHEMA: Schema = {
    "ingest.url_col": Option(str, "column holding the image URL (LAION parquet: URL; a CC12M tsv without header: "
                             "name the columns in the file)", default="url"),
    "ingest.caption_col": Option(str, "column holding the caption (LAION: TEXT); null = none", nullable=True,
                                 default="caption"),
    "ingest.samples_per_shard": Option(int, "input rows per raw shard", min=1, default=10000),
    "ingest.thread_count": Option(int, "download threads per worker process", min=1, default=32),
    "ingest.timeout": Option(float, "seconds a connect or a read may wait (img2dataset's timeout)", min=0.1,
                             default=10.0),
    "ingest.retries": Option(int, "retries of a transient failure (timeout, connection error, HTTP 408, 429, 5xx) "
                             "after an exponential backoff; never another 4xx, never past deadline_seconds from "
                             "the first attempt", min=0, default=2),
    "ingest.backoff_base": Option(float, "seconds before the first retry; doubled for each further one",
                                  min=0, default=1.0),
    "ingest.backoff_max": Option(float, "longest wait between two attempts (s), before jitter", min=0,
                                 default=60.0),
    "ingest.backoff_jitter": Option(float, "share of each backoff taken off at random (0 = exact schedule, 1 = "
                                    "full jitter)", min=0, max=1, default=0.5),
    "ingest.max_retry_after": Option(float, "longest Retry-After (of a 429 or 503) honoured, in seconds; the "
                                     "host pauses that long for the whole worker process", min=0, default=120.0),
    "ingest.per_host_connections": Option(int, "requests at once to one host, per worker process (all its "
                                          "threads); 0 = no limit", min=0, default=4),
    "ingest.per_host_rate": Option(float, "requests per second started to one host, per worker process (at most "
                                   "one every 1/rate s); 0 = no limit", min=0, default=10.0),
    "ingest.group_by_host": Option(bool, "cut shards from the table sorted by host name, so that one host's URLs "
                                   "land in few shards and worker processes (keys follow that order)",
                                   default=False),
    "ingest.respect_robots_txt": Option(bool, "fetch each site's robots.txt once per worker process and skip what "
                                        "it disallows to user_agent_token (or *)", default=True),
    "ingest.respect_tdmrep": Option(bool, "honour the TDM Reservation Protocol: a tdm-reservation: 1 response "
                                    "header or the site's /.well-known/tdmrep.json opts out", default=True),
    "ingest.dns_ttl": Option(float, "seconds a host name's addresses (or its failure) are reused, per worker "
                             "process; 0 = resolve at every connect", min=0, default=300.0),
    "ingest.image_size": Option(int, "target size of the resize (px)", min=1, default=512),
    "ingest.resize_mode": Option(str, "img2dataset's resize mode", choices=(
        "no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"), default="keep_ratio_largest"),
    "ingest.resize_only_if_bigger": Option(bool, "never upscale", default=True),
    "ingest.min_image_size": Option(int, "refuse images whose shorter side is below this (px)", min=0, default=0),
    "ingest.max_aspect_ratio": Option(float, "refuse images with a larger long/short ratio; null = any",
                                      min=1, nullable=True, default=None),
    "ingest.max_image_pixels": Option(int, "refuse images declaring more pixels, before decoding (this cap, not "
                                      "PIL's; at most 2**30, OpenCV's own decoding limit)", min=1, max=2 ** 30,
                                      default=PIL_DEFAULT_MAX_PIXELS),
    "ingest.reduced_decode": Option(bool, "decode a JPEG at least twice the target size at 1/2, 1/4 or 1/8 scale "
                                    "before the resize (same output size; README \"Reduced-size decoding\"); "
                                    "false = img2dataset's full decode, byte for byte", default=True),
    "ingest.encode_format": Option(str, "format of the stored image", choices=("jpg", "png", "webp"), default="jpg"),
    "ingest.encode_quality": Option(int, "jpg/webp quality (0-100); png compression (0-9)", min=0, max=100,
                                    default=95),
    "ingest.compute_hash": Option(str, "hash of the downloaded bytes in each row", choices=("md5", "sha256", "sha512"),
                                  nullable=True, default="sha256"),
    "ingest.extract_exif": Option(bool, "keep the image's EXIF as a json string", default=True),
    "ingest.user_agent_token": Option(str, "token added to the User-Agent (e.g. img2dataset); X-Robots-Tag lines "
                                      "naming it apply", nullable=True, default=None),
    "ingest.disallowed_header_directives": Option(str, "X-Robots-Tag directives honoured as an opt-out "
                                                  "(comma-separated; empty = ignore the header)",
                                                  default="noai, noimageai, noindex, noimageindex"),
    "ingest.max_image_bytes": Option(int, "refuse responses larger than this", min=1, default=20000000),
    "ingest.deadline_seconds": Option(float, "a whole response must arrive within this (a trickling server cannot "
                                      "hold a thread)", min=0.1, default=60.0),
    "ingest.allow_networks": Option(str, "non-public networks that may be fetched (CIDRs, comma-separated), "
                                    "e.g. 10.0.0.0/8 for an intranet; empty = public addresses only", default=""),
    "ingest.check_content_type": Option(bool, "refuse responses whose Content-Type is not an image (text/html "
                                        "error pages)", default=True),
    "ingest.retry_failed": Option(bool, "download again only the failed rows of finished shards, merged in place "
                                  "(same output)", default=False),
}

LAION_FILTER_SCHEMA: Schema = {
    **INPUT_SCHEMA,
    "output": _output("laion_filter"),
    **SAMPLE_CORPUS_SCHEMA,
    "scores": Option(str, "reuse the stored scores of this score/laion_filter output folder: no model is "
                     "loaded; null = score now", nullable=True, default=None),
    "save_embeddings": Option(bool, "write OUT/embeddings (clip-retrieval layout) for later re-selection",
                              default=True),
    "filters.min_image_size": Option(int, "drop images whose shorter side is below this (px)", min=0, default=200),
    "filters.max_aspect_ratio": Option(float, "drop images whose long/short side ratio exceeds this", min=1,
                                       default=3.0),
    "filters.min_caption_words": Option(int, "drop captions with fewer words (scripts without spaces: "
                                      "letters per word, see filters/basic.py)", min=0, default=3),
    "filters.min_caption_chars": Option(int, "drop captions with fewer characters", min=0, default=6),
    "filters.boilerplate_captions": Option(bool, "drop file-name and web-boilerplate captions (IMG_1234.jpg, "
                                           "click here, ...)", default=True),
    **BALANCE_SCHEMA,
    **SCORER_SCHEMA,
    "select.mode": Option(str, "threshold: absolute cosine (LAION); language: per-language thresholds; "
                          "fraction: top fraction of the corpus (DataComp); language_fraction: top fraction "
                          "within each caption language", choices=("threshold", "language", "fraction",
                                                                    "language_fraction"),
                          default="threshold"),
    "select.clip_threshold": Option(float, "mode threshold: drop pairs whose image-text cosine is below this (the "
                                    "default suits the demo scorer; LAION used 0.28 with ViT-B/32)",
                                    min=-1, max=1, default=0.6),
    "select.language_thresholds": Option(dict, "mode language: threshold per language code; 'default' (required) for "
                                         "the others and for unknown languages (LAION: 0.28 English with ViT-B/32, "
                                         "0.26 others with multilingual CLIP)", min=-1, max=1,
                                         required=(DEFAULT_LANGUAGE_KEY,),
                                         default={"en": 0.6, DEFAULT_LANGUAGE_KEY: 0.6}),
    "select.fraction": Option(float, "modes fraction and language_fraction: keep this share of the scored, "
                              "filtered corpus, or of each language (DataComp's CLIP-score top 30%)",
                              min=0, max=1, default=0.3),
    "dedup.exact": Option(bool, "drop samples whose image bytes repeat (sha256)", default=True),
    "dedup.near": Option(bool, "drop near-duplicate images (by dedup.near_method)", default=True),
    "dedup.near_threshold": Option(float, "image cosine at or above which two images are near duplicates "
                                   "(near_method clip, both, either)",
                                   min=0, max=1, default=0.96),
    **DEDUP_SCHEMA,
    **LISTS_SCHEMA,
    **PROBES_SCHEMA,
    "shards.samples_per_shard": Option(int, "samples per curated tar (the last may hold fewer)", min=1, default=1000),
    "exports": Option(list, "family exports of the curated shards, each into OUT/exports/<format> "
                      "(settings: configs/export.yaml)", choices=tuple(FORMATS), default=[]),
    "exports_config": Option(str, "YAML overriding configs/export.yaml's per-format settings for `exports`",
                             nullable=True, default=None),
    **INGEST_SCHEMA,  # used when input is a URL table: downloaded into OUT/raw first
}
SCORE_SCHEMA: Schema = {**INPUT_SCHEMA, "output": _output("score"), **SAMPLE_CORPUS_SCHEMA, **SCORER_SCHEMA,
                        **LISTS_SCHEMA}
EXPORT_SCHEMA: Schema = {
    "input": Option(str, "curated shards: a laion_filter OUT/shards folder, a glob or a .tar",
                    default=None),  # not nullable: the user must name them
    "output": _output("export", "export folder: one subfolder per format"),
    "formats": Option(list, "export formats to write, each into its own folder", choices=tuple(FORMATS),
                      default=["contrastive", "flava", "llava", "blip2"]),
    **FORMAT_SCHEMA,
}
INGEST_PIPELINE_SCHEMA: Schema = {
    "input": Option(str, "URL table: a .parquet/.csv/.tsv/.jsonl file (.gz allowed) or a folder of them",
                    nullable=True, default=None),
    "output": _output("ingest"),
    **INGEST_SCHEMA,
    **LISTS_SCHEMA,
}
# What a section of a config is for: its comment in configs/NAME.yaml (PipelineSpec.notes may say more).
SECTIONS = {
    "sample_corpus": "used only when input is null; generated into OUTPUT/sample_corpus",
    "filters": "DataComp's basic filter (language selection is a separate step)",
    "balance": "MetaCLIP / MetaCLIP 2 balancing over metadata entries (configs/metadata), and the coverage audit",
    "decontaminate": "drop samples whose image is a copy of an evaluation image",
    "dedup.semdedup": "SemDeDup (Abbas et al. 2023) after near dedup, within k-means clusters",
    "safety": "block lists (filters/blocklist.py), e.g. [{path: lists/csam.md5, kind: md5}, {path: bad.txt, kind: "
              "term, language: en}]",
    "consent": "opt-out lists (filters/blocklist.py), in the format of safety.blocklists",
    **FORMAT_SECTIONS,
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
    # configs/NAME.yaml's header lines below the description, and its section comments where they
    # differ from SECTIONS.
    about: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)


RAW = "raw"  # OUT/raw: the raw shards ingested from a URL table
PIPELINES = {
    "laion_filter": PipelineSpec(
        module="curate.pipelines.laion_filter",
        description="basic filters, CLIP score selection, exact and near-duplicate removal, curated shards",
        schema=LAION_FILTER_SCHEMA,
        outputs=(RAW, "embeddings", "shards", "exports", "decisions", "report.json", "report.html"),
        reads=("input", "scores", "decontaminate.eval_set", "exports_config", "safety.blocklists",
               "consent.optout", "probes"),
        about=("python -m curate.run --pipeline laion_filter --input RAW_SHARDS_OR_URL_TABLE --output OUTPUT",),
        notes={"ingest": "used when input is a URL table (parquet/csv/tsv/jsonl): ingested into OUTPUT/raw "
                         "first, as --pipeline ingest does (the same keys and defaults as configs/ingest.yaml)"}),
    "score": PipelineSpec(
        module="curate.pipelines.score",
        description="CLIP image and text embeddings + metadata in clip-retrieval's layout (reused by selection)",
        schema=SCORE_SCHEMA,
        outputs=("embeddings", "decisions", "report.json", "report.html"),
        reads=("input", "safety.blocklists", "consent.optout"),
        about=("python -m curate.run --pipeline score --input RAW_SHARDS --output OUTPUT",
               "Re-select later without the model: python -m curate.run --pipeline laion_filter --set scores=OUTPUT"),
        notes={"filters": "only the decoder's pixel cap: the other filters run at selection (laion_filter)",
               "select": "only the caption language, stored with the scores for selection"}),
    "export": PipelineSpec(
        module="curate.pipelines.export",
        description="curated shards -> CLIP WebDataset, FLAVA masked/unimodal shards, Chameleon tokens, "
                    "LLaVA JSON, BLIP-2 shards",
        schema=EXPORT_SCHEMA,
        outputs=(*FORMATS, "decisions", "report.json", "report.html"),
        reads=("input", "flava.run_dir", "flava.codebook", "chameleon.vq_model", "chameleon.tokenizer"),
        about=("python -m curate.run --pipeline export --input OUT/shards --output EXPORT_DIR",
               "laion_filter reads the per-format sections below too (its `exports` list picks the formats).")),
    "ingest": PipelineSpec(
        module="curate.pipelines.ingest",
        description="URL + caption table (parquet, csv, tsv, jsonl) -> raw WebDataset shards, via img2dataset",
        schema=INGEST_PIPELINE_SCHEMA,
        outputs=(RAW, "decisions", "report.json", "report.html"),
        reads=("input", "safety.blocklists", "consent.optout"),
        about=("python -m curate.run --pipeline ingest --input URL_TABLE --output OUTPUT   (writes OUTPUT/raw)",),
        notes={"ingest": "img2dataset's download settings; the resize defaults are DataComp's (longest side "
                         "512, never upscaled)"}),
}
# Every name some pipeline writes in its output folder.
ALL_OUTPUTS = tuple(sorted({name for spec in PIPELINES.values() for name in spec.outputs}))
