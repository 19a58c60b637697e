"""Regions where the embedded corpus's speakers live, and their demographics.

With `CorpusSpec(regions="accent")` a speaker's region is its accent's home region
(`libs.data.corpus.Accent.region`), so region and accent are the same cohort. With
`regions="mixed"` a speaker's region is drawn from this table: most speakers of an
accent live in its home regions, but some accents are spread over several regions
(en-US over the Midwest, Texas, California, Florida, New England and New York; en-029
over Jamaica and Trinidad but also New York City, Miami, London and Birmingham) and
some regions are mixed (London, New York City, Miami, Manchester). Geographic and
geo-demographic cohorts are then properties of their own, not accents renamed.

`demographics` computes, from a generated population, the region-level table that
census data gives for zip codes: speaker count, majority accent, accent shares, female
share and the region's centre.

Example:
  >>> from libs.data import corpus, regions
  >>> spec = corpus.CorpusSpec(regions="mixed", train_speakers=200)
  >>> table = regions.demographic_table(spec)
  >>> table["Jamaica"].majority_accent
  'en-029'
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from typing import Iterable, Mapping, Sequence, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  from libs.data import corpus  # pylint: disable=cyclic-import


@dataclasses.dataclass(frozen=True)
class Region:
  """A place speakers live, with how many of each accent's speakers live there."""
  name: str
  latitude: float
  longitude: float
  spread_deg: float  # std of home locations around the centre, in degrees.
  # Accent name -> share of that accent's speakers living here; an accent's shares over
  # all regions sum to 1 (`accent_regions` renormalises anyway).
  accent_weights: Mapping[str, float]


REGIONS: tuple[Region, ...] = (
    # United States.
    Region("US Midwest", 39.8, -89.6, 3.0, {"en-US": 0.30}),
    Region("Texas", 31.0, -97.5, 2.5, {"en-US": 0.18}),
    Region("California", 36.5, -119.5, 2.5, {"en-US": 0.22, "en-US-nyc": 0.04}),
    Region("Florida", 28.0, -81.7, 1.2, {"en-US": 0.12, "en-US-nyc": 0.12}),
    Region("Miami", 25.77, -80.19, 0.15, {"en-US": 0.03, "en-US-nyc": 0.06, "en-029": 0.10}),
    Region("New England", 42.36, -71.06, 0.8, {"en-US": 0.06, "en-US-nyc": 0.06}),
    Region("New York City", 40.71, -74.0, 0.15,
           {"en-US-nyc": 0.72, "en-US": 0.06, "en-029": 0.14, "en-GB-x-rp": 0.02}),
    # England.
    Region("London", 51.51, -0.13, 0.15,
           {"en-GB-x-rp": 0.35, "en-029": 0.12, "en-US": 0.03, "en-GB-scotland": 0.05,
            "en-GB-x-gbclan": 0.04, "en-GB-x-gbcwmd": 0.06}),
    Region("Home Counties", 51.3, -0.6, 0.45, {"en-GB-x-rp": 0.35, "en-GB-x-gbcwmd": 0.03}),
    Region("Oxford", 51.75, -1.26, 0.08, {"en-GB-x-rp": 0.10, "en-GB-x-gbcwmd": 0.04}),
    Region("Cambridge", 52.2, 0.12, 0.08, {"en-GB-x-rp": 0.08}),
    Region("West Midlands", 52.48, -1.9, 0.25,
           {"en-GB-x-gbcwmd": 0.82, "en-029": 0.04, "en-GB-x-rp": 0.03, "en-GB-x-gbclan": 0.03}),
    Region("Manchester", 53.48, -2.24, 0.12,
           {"en-GB-x-gbclan": 0.28, "en-GB-x-gbcwmd": 0.05, "en-GB-x-rp": 0.03,
            "en-GB-scotland": 0.03, "en-029": 0.02}),
    Region("Lancashire", 53.8, -2.6, 0.3, {"en-GB-x-gbclan": 0.65}),
    # Scotland.
    Region("Glasgow", 55.86, -4.25, 0.15, {"en-GB-scotland": 0.40}),
    Region("Edinburgh", 55.95, -3.19, 0.12, {"en-GB-scotland": 0.30, "en-GB-x-rp": 0.04}),
    Region("Scottish Highlands", 57.3, -4.7, 0.7, {"en-GB-scotland": 0.22}),
    # Caribbean.
    Region("Jamaica", 18.1, -77.3, 0.5, {"en-029": 0.36}),
    Region("Trinidad and Tobago", 10.5, -61.3, 0.3, {"en-029": 0.22}),
)
REGION_NAMES = tuple(r.name for r in REGIONS)
REGIONS_BY_NAME = {r.name: r for r in REGIONS}


def _validate(table: Sequence[Region]) -> None:
  names = [r.name for r in table]
  repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
  if repeated:
    raise ValueError(f"region names must be unique, got repeated {repeated}")
  for r in table:
    if not (math.isfinite(r.spread_deg) and r.spread_deg > 0 and -90 <= r.latitude <= 90
            and -180 <= r.longitude <= 180):
      raise ValueError(f"region {r.name!r}: bad centre ({r.latitude}, {r.longitude}) or spread "
                       f"{r.spread_deg}")
    if not r.accent_weights or not all(math.isfinite(w) and w > 0 for w in r.accent_weights.values()):
      raise ValueError(f"region {r.name!r}: accent_weights must be positive, got {r.accent_weights}")


_validate(REGIONS)


def accent_regions(accent: str) -> tuple[tuple[str, ...], np.ndarray]:
  """The regions an accent's speakers live in and the probability of each.

  Args:
    accent: an accent name, e.g. "en-029".

  Returns:
    (region names in `REGIONS` order, float64 probabilities summing to 1); only regions
    with a positive weight for the accent.

  Example:
    >>> names, probs = accent_regions("en-GB-scotland")
    >>> names[:2], probs.round(2)[:2]
    (('London', 'Manchester'), array([0.05, 0.03]))
  """
  pairs = [(r.name, r.accent_weights[accent]) for r in REGIONS if accent in r.accent_weights]
  if not pairs:
    raise ValueError(f"no region in libs.data.regions.REGIONS has speakers of accent {accent!r}")
  weights = np.array([w for _, w in pairs], np.float64)
  return tuple(n for n, _ in pairs), weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class RegionDemographics:
  """Census-like facts about one region of a generated population.

  Attributes:
    region: the region's name.
    speakers: number of speakers living there (all splits).
    majority_accent: the most common accent (ties: the first name in sorted order).
    accent_shares: accent -> share of the region's speakers; accents with speakers
      there only, most common first (ties by name). Shares sum to 1.
    female_share: share of the region's speakers who are female.
    latitude: the region's centre (from `REGIONS`, else from its accent in
      `libs.data.corpus.ACCENTS`, else the mean of its speakers' homes).
    longitude: likewise.
  """
  region: str
  speakers: int
  majority_accent: str
  accent_shares: Mapping[str, float]
  female_share: float
  latitude: float
  longitude: float


def _centres() -> dict[str, tuple[float, float]]:
  from libs.data import corpus  # pylint: disable=import-outside-toplevel,cyclic-import

  centres = {a.region: (a.latitude, a.longitude) for a in corpus.ACCENTS}
  centres.update({r.name: (r.latitude, r.longitude) for r in REGIONS})
  return centres


def _region_order(name: str) -> tuple[int, str]:
  return (REGION_NAMES.index(name) if name in REGIONS_BY_NAME else len(REGIONS), name)


def demographics(
    speakers: Mapping[str, Sequence[corpus.Speaker]] | Iterable[corpus.Speaker],
) -> dict[str, RegionDemographics]:
  """Region-level demographics of a population of speakers.

  Args:
    speakers: `make_speakers(spec)` (all splits are pooled) or any iterable of speakers.

  Returns:
    region name -> its `RegionDemographics`, for every region with at least one speaker;
    regions of `REGIONS` first in table order, then any others by name.

  Example:
    >>> table = demographics(corpus.make_speakers(corpus.CorpusSpec(regions="mixed")))
    >>> table["New York City"].accent_shares
    {'en-US-nyc': 0.9, 'en-029': 0.1}
  """
  if isinstance(speakers, Mapping):
    speakers = itertools.chain.from_iterable(speakers.values())
  by_region: dict[str, list[corpus.Speaker]] = collections.defaultdict(list)
  for s in speakers:
    by_region[s.region].append(s)
  centres = _centres()
  table = {}
  for name in sorted(by_region, key=_region_order):
    members = by_region[name]
    n = len(members)
    counts = sorted(collections.Counter(s.accent for s in members).items(), key=lambda kv: (-kv[1], kv[0]))
    centre = centres.get(name) or (float(np.mean([s.latitude for s in members])),
                                   float(np.mean([s.longitude for s in members])))
    table[name] = RegionDemographics(
        region=name,
        speakers=n,
        majority_accent=counts[0][0],
        accent_shares={accent: c / n for accent, c in counts},
        female_share=sum(s.gender == "female" for s in members) / n,
        latitude=float(centre[0]),
        longitude=float(centre[1]),
    )
  return table


def demographic_table(spec: corpus.CorpusSpec) -> dict[str, RegionDemographics]:
  """`demographics` of all speakers (every split) of `spec`; no audio is synthesized.

  Example:
    >>> table = demographic_table(corpus.CorpusSpec(regions="mixed", train_speakers=200))
    >>> table["Manchester"].speakers, table["Manchester"].majority_accent
    (14, 'en-GB-x-gbclan')
  """
  from libs.data import corpus  # pylint: disable=import-outside-toplevel,redefined-outer-name

  return demographics(corpus.make_speakers(spec))
