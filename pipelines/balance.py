"""balance: MetaCLIP's metadata balancing as a Beam step, between the basic filters and CLIP selection.

Each sample's caption is matched against its language's metadata entries (``MatchMetadata``;
filters/metadata.py); the matches of the whole corpus are counted per (language, entry) with a
combiner (``CountOncePerSample``: no sample is gathered, one count per matched entry meets on one
worker); each language gets its cap (filters/balance.py ``caps_by_language``), and every sample is
decided where it is by MetaCLIP's draw against the counts and caps as a side input (``BalanceFn``).
Where MetaCLIP places it (before CLIP filtering: its pool is balanced, then trained on), and after
the basic filters, so that empty or boilerplate captions do not count towards an entry.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from types import SimpleNamespace

import apache_beam as beam
from curate.filters import balance, select
from curate.filters.metadata import DEFAULT_METADATA, Metadata, load_metadata

from curate.config import ConfigError, section
from curate.gather import CountOncePerSample
from curate.outputs import DECISIONS, MAIN, split
from curate.records import BALANCE, Sample, decision

# One load per folder and process: validate, the matching step, the balancing step and the report
# all ask for the lists, and a web-scale list (MetaCLIP's 500k entries) takes seconds to build.
_load_metadata = functools.lru_cache(maxsize=4)(load_metadata)


@dataclass(frozen=True)
class BalanceParams:
    """The ``balance.*`` keys (pipelines/specs.py says what each means)."""
    enabled: bool = False
    metadata: str | None = None
    cap: float = 20000.0
    caps: str = "fixed"
    reference_language: str = "en"
    language_caps: dict = dataclasses.field(default_factory=dict)
    unmatched: str = "keep"
    seed: int = 0
    coverage: bool = True

    @classmethod
    def from_config(cls, cfg: dict) -> BalanceParams:
        return cls(**section(cfg, "balance"))

    @property
    def matches(self) -> bool:
        """Whether captions are matched at all: to balance, or for the coverage audit alone."""
        return self.enabled or self.coverage

    def load(self) -> Metadata:
        """The metadata lists; a ConfigError (one line) when the folder holds none."""
        try:
            return _load_metadata(self.metadata or DEFAULT_METADATA)
        except (OSError, ValueError) as e:
            raise ConfigError(f"config error: balance.metadata: {e}") from None

    def caps_for(self, counts_by_language: dict) -> tuple[dict[str, float], str | None]:
        """Each language's cap for these counts, and a note when ``caps`` could not be followed."""
        return balance.caps_by_language(counts_by_language, self.cap, self.caps, self.reference_language,
                                        self.language_caps)


def counts_by_language(counts: list) -> dict[str, dict[str, int]]:
    """[((language, entry), count)] (``CountOncePerSample``'s output) -> {language: {entry: count}}."""
    by_language: dict[str, dict[str, int]] = {}
    for (language, entry), n in counts:
        by_language.setdefault(language, {})[entry] = n
    return by_language


class _MatchFn(beam.DoFn):
    """A sample -> a copy that carries its matched entries (``Sample.metadata_entries``) and its
    caption language (detected when the sample has none and ``detect``)."""

    def __init__(self, metadata: Metadata, detect: bool):
        self._metadata, self._detect = metadata, detect

    def process(self, sample: Sample):
        language = select.language_of(sample, self._detect)
        yield dataclasses.replace(sample, language=language,
                                  metadata_entries=self._metadata.match(sample.caption, language))


class _LanguageEntries:
    """sample -> its (list language, entry) pairs: what balancing counts; picklable."""

    def __init__(self, metadata: Metadata):
        self._metadata = metadata

    def __call__(self, sample: Sample) -> list:
        language = self._metadata.list_language(sample.language)
        return [(language, entry) for entry in sample.metadata_entries or ()]


class BalanceFn(beam.DoFn):
    """A matched sample against the corpus-wide counts and caps (side input ``plan``: (counts by
    language, caps)): kept (main) or a decision row with ``balanced_out`` / ``no_metadata_match``
    and the cap of its language."""

    def __init__(self, metadata: Metadata, params: BalanceParams):
        self._metadata, self._params = metadata, params

    def process(self, sample: Sample, plan):
        counts, caps = plan
        language = self._metadata.list_language(sample.language)
        cap = caps.get(language, self._params.cap)
        reason = balance.balance_decision(sample.key, sample.metadata_entries or (), counts.get(language, {}), cap,
                                          self._params.seed, self._params.unmatched)
        if reason:
            yield DECISIONS, decision(sample, False, BALANCE, reason, balance_cap=cap)
        else:
            yield MAIN, sample


def _plan(counts: list, params: BalanceParams) -> tuple[dict, dict]:
    by_language = counts_by_language(counts)
    return by_language, params.caps_for(by_language)[0]


class MatchMetadata(beam.PTransform):
    """Samples -> copies that carry their matched entries, when balancing or the coverage audit
    asks for them (``BalanceParams.matches``); otherwise the samples as they are."""

    def __init__(self, metadata: Metadata | None, detect: bool):
        super().__init__()
        self._metadata, self._detect = metadata, detect

    @classmethod
    def from_config(cls, cfg: dict) -> MatchMetadata:
        """Loads the lists now: a missing or empty balance.metadata is reported before any work."""
        params = BalanceParams.from_config(cfg)
        return cls(params.load() if params.matches else None, cfg["select.detect_language"])

    def expand(self, samples):
        if self._metadata is None:
            return samples
        return samples | "Match" >> beam.ParDo(_MatchFn(self._metadata, self._detect))


class Balance(beam.PTransform):
    """Matched samples -> kept samples (main) and 'decisions' (MetaCLIP's sampling, module docstring);
    when ``balance.enabled`` is off, the samples as they are and no decisions."""

    def __init__(self, params: BalanceParams, metadata: Metadata | None):
        super().__init__()
        self._params, self._metadata = params, metadata

    @classmethod
    def from_config(cls, cfg: dict) -> Balance:
        params = BalanceParams.from_config(cfg)
        return cls(params, params.load() if params.enabled else None)

    def expand(self, samples):
        if self._metadata is None:
            return SimpleNamespace(passed=samples, decisions=samples.pipeline | "NotBalanced" >> beam.Create([]))
        metadata = self._metadata
        counts = samples | "CountEntries" >> CountOncePerSample(_LanguageEntries(metadata))
        plan = beam.pvalue.AsSingleton(counts | "Caps" >> beam.Map(_plan, self._params), default_value=({}, {}))
        return split(samples | "Draw" >> beam.ParDo(BalanceFn(metadata, self._params), plan), "Draw", "passed")
