"""Simulated voice-assistant requests from a population of devices, stored flat (CSR).

The generator writes NLU-style requests ("set a timer for ten minutes", "play shake it off
by taylor swift") for 14 intents, each with several templates and slot vocabularies. Data is
non-IID the way real device data is:
  * each device has its own intent mix (Dirichlet around a global prior), preferred phrasing
    (a favourite template per intent, a favourite wake phrase) and favourite slot values
    (three per slot type, drawn from a Zipfian global popularity: its artists, its contacts);
  * activity is heavy-tailed: the number of examples of a device follows a capped power law
    (Pareto with density ~ x^-zipf_a, i.e. the continuous Zipf law), scaled so that the mean
    is about `mean_examples`, with at least 1 and at most `max_examples_per_device`;
  * with `num_periods > 1` a device's examples are spread over consecutive periods by its own
    Dirichlet activity profile (some periods busy, some idle), and its intent mix drifts
    linearly towards a second mix (`drift` is the weight of the second mix in the last period).

A device's rows are stored in chronological order (periods ascending; within a period, in the
order it produced them), which `continual.available` relies on to delete the oldest first.

Train and test devices: the "world" (global intent prior, slot popularity) depends on `seed`
only, and devices are drawn from a separate random stream. `generate_population` draws the
training devices from stream 0 and `held_out` draws test devices from stream 1: new users of
the same world, disjoint from the training devices.

Example:
  >>> data = generate_population(1000, seed=0)
  >>> data.num_devices, data.tokens.shape[1]
  (1000, 16)
  >>> batch = data.client_batch([0, 5, 7], max_examples=32)
  >>> batch.tokens.shape, batch.mask.shape
  ((3, 32, 16), (3, 32))
  >>> test = held_out(200, seed=0)   # same world, other devices
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import numpy as np

from libs.train import rng as rng_lib

PAD, UNK, BOS, EOS = 0, 1, 2, 3
RESERVED = ("<pad>", "<unk>", "<bos>", "<eos>")

# Slot vocabularies; a value may span several words.
SLOTS: dict[str, tuple[str, ...]] = {
    "artist": ("taylor swift", "the beatles", "adele", "drake", "coldplay", "beyonce", "queen", "eminem",
               "rihanna", "metallica", "shakira", "nirvana", "madonna", "bruno mars", "ed sheeran",
               "daft punk", "abba", "the weeknd", "lady gaga", "bob marley", "miles davis", "mozart",
               "billie eilish", "radiohead"),
    "song": ("shake it off", "yesterday", "hello", "yellow", "bohemian rhapsody", "lose yourself",
             "umbrella", "one", "hips don't lie", "smells like teen spirit", "vogue", "uptown funk",
             "shape of you", "get lucky", "dancing queen", "blinding lights", "bad romance",
             "three little birds", "so what", "bad guy", "creep", "halo", "let it be", "viva la vida"),
    "genre": ("jazz", "rock", "pop", "classical", "hip hop", "country", "reggae", "blues", "metal",
              "lofi", "dance", "soul"),
    "playlist": ("workout", "morning", "dinner", "focus", "party", "sleep", "road trip", "chill"),
    "duration": ("one minute", "two minutes", "three minutes", "five minutes", "ten minutes",
                 "fifteen minutes", "twenty minutes", "thirty minutes", "forty five minutes", "one hour",
                 "two hours", "half an hour", "ninety seconds", "thirty seconds"),
    "food": ("pasta", "eggs", "rice", "pizza", "cake", "cookies", "potatoes", "tea", "bread", "chicken"),
    "city": ("london", "paris", "new york", "tokyo", "berlin", "madrid", "rome", "chicago", "boston",
             "seattle", "sydney", "toronto", "dublin", "edinburgh", "mumbai", "cairo", "lagos", "lima",
             "austin", "denver", "vienna", "oslo", "seoul", "san francisco"),
    "day": ("today", "tomorrow", "tonight", "this weekend", "on monday", "on tuesday", "on wednesday",
            "on thursday", "on friday", "on saturday", "on sunday", "next week", "this morning",
            "this afternoon"),
    "item": ("milk", "eggs", "bread", "butter", "apples", "bananas", "coffee", "tea", "rice", "pasta",
             "cheese", "yogurt", "tomatoes", "onions", "garlic", "chicken", "salmon", "cereal",
             "orange juice", "paper towels", "dish soap", "toothpaste", "shampoo", "batteries",
             "olive oil", "flour", "sugar", "chocolate", "lettuce", "carrots", "dog food", "diapers"),
    "list": ("shopping", "grocery", "to do", "packing", "hardware store", "party"),
    "time": ("six am", "six thirty am", "seven am", "seven fifteen", "seven thirty am", "eight am",
             "nine am", "noon", "one pm", "three pm", "five thirty pm", "six pm", "eight pm", "ten pm",
             "midnight", "five am", "eleven thirty"),
    "contact": ("mom", "dad", "grandma", "grandpa", "john", "sarah", "mike", "emma", "david", "olivia",
                "james", "sophia", "my wife", "my husband", "my boss", "the office", "doctor smith",
                "aunt mary", "uncle bob", "chris", "anna", "lucas", "mia", "noah", "priya", "wei"),
    "phone": ("mobile", "home phone", "work phone", "speaker"),
    "place": ("airport", "train station", "gas station", "supermarket", "pharmacy", "hospital",
              "library", "gym", "park", "office", "school", "coffee shop", "post office", "bank",
              "museum", "beach", "stadium", "hotel", "mall", "home"),
    "room": ("kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway",
             "dining room", "kids room", "basement", "porch", "garden"),
    "onoff": ("on", "off"),
    "percent": ("ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"),
    "color": ("red", "blue", "green", "warm white", "cool white", "purple", "orange", "pink", "yellow"),
    "task": ("call the dentist", "take my pills", "pay the rent", "water the plants", "feed the cat",
             "walk the dog", "buy a gift", "pick up the kids", "book a table", "renew my passport",
             "take out the trash", "send the report", "charge my phone", "check the oven",
             "stretch", "drink water", "call mom", "lock the door"),
    "topic": ("sports", "business", "technology", "science", "politics", "world", "health",
              "weather", "music", "movie", "local", "football", "tennis", "stock market"),
    "source": ("the bbc", "npr", "reuters", "the times", "the guardian", "cnn", "the local paper"),
    "status": ("running late", "on my way", "almost home", "at the store", "stuck in traffic",
               "in a meeting", "five minutes away", "leaving now", "busy", "home"),
    "podcast": ("the daily", "serial", "radiolab", "this american life", "planet money",
                "the history hour", "science weekly", "freakonomics", "hidden brain", "the morning show"),
    "phrase": ("thank you", "good morning", "where is the station", "how much is it", "i love you",
               "excuse me", "good night", "nice to meet you", "the bill please", "help"),
    "language": ("spanish", "french", "german", "italian", "japanese", "chinese", "portuguese",
                 "hindi", "arabic", "korean", "russian", "dutch"),
    "degrees": ("sixty", "sixty five", "sixty eight", "seventy", "seventy two", "eighteen", "nineteen",
                "twenty", "twenty one", "twenty two", "twenty three"),
    # A device's wake phrase / politeness habit; "" means none.
    "prefix": ("", "please", "hey assistant", "ok assistant", "could you", "can you", "hey",
               "assistant", "excuse me", "quick question"),
}

# Templates per intent; "{slot}" is filled from SLOTS.
INTENTS: dict[str, tuple[str, ...]] = {
    "play_music": ("play {song} by {artist}", "play some {genre} music", "put on {artist}",
                   "i want to hear {song}", "play {artist} in the {room}", "shuffle my {playlist} playlist",
                   "play the song {song}"),
    "set_timer": ("set a timer for {duration}", "start a {duration} timer", "timer for {duration}",
                  "count down {duration}", "set a {duration} timer for the {food}"),
    "get_weather": ("what is the weather in {city}", "will it rain in {city} {day}",
                    "how hot will it be {day}", "do i need an umbrella {day}", "weather forecast for {city}",
                    "is it going to snow {day}"),
    "add_to_list": ("add {item} to my {list} list", "put {item} on the list", "i need to buy {item}",
                    "add {item} and {item} to my list", "we are out of {item}"),
    "set_alarm": ("wake me up at {time}", "set an alarm for {time} {day}", "alarm at {time}",
                  "change my alarm to {time}", "i need to get up at {time}"),
    "call_contact": ("call {contact}", "call {contact} on the {phone}", "dial {contact}",
                     "ring {contact}", "video call {contact}", "get {contact} on the phone"),
    "navigate": ("navigate to the {place}", "directions to the {place} in {city}",
                 "how long to drive to the {place}", "take me to the nearest {place}",
                 "avoid traffic on the way to the {place}", "find a route home from the {place}"),
    "lights": ("turn {onoff} the lights in the {room}", "dim the {room} lights to {percent} percent",
               "switch {onoff} the {room} lamp", "set the {room} lights to {color}",
               "make the {room} brighter"),
    "set_reminder": ("remind me to {task} {day}", "remind me to {task} at {time}",
                     "do not let me forget to {task}", "set a reminder to {task}",
                     "remind me {day} to {task}"),
    "get_news": ("what is the latest {topic} news", "read me the headlines from {source}",
                 "any news about {topic}", "give me the {topic} headlines from {source}",
                 "what happened in {city} {day}"),
    "send_message": ("text {contact} that i am {status}", "send a message to {contact} saying i am {status}",
                     "tell {contact} i am {status}", "message {contact} i will be late"),
    "play_podcast": ("play the latest episode of {podcast}", "resume {podcast}",
                     "play {podcast} from the beginning", "next episode of {podcast}",
                     "what is new on {podcast}"),
    "translate": ("how do you say {phrase} in {language}", "translate {phrase} to {language}",
                  "what is {phrase} in {language}", "say {phrase} in {language}"),
    "thermostat": ("set the temperature to {degrees} degrees", "make it warmer in the {room}",
                   "turn the heat down to {degrees}", "set the {room} thermostat to {degrees}",
                   "it is too cold in the {room}"),
}

_NUM_FAVOURITES = 3      # favourite values per slot type and device
_FAVOURITE_PROB = 0.6    # how often a device uses a favourite slot value
_TEMPLATE_PREF_PROB = 0.5
_INTENT_CONCENTRATION = 3.0  # total Dirichlet mass of a device's intent mix (small: skewed)


class ClientBatch(NamedTuple):
  tokens: np.ndarray        # int32 [C, N, L]
  intents: np.ndarray       # int32 [C, N]
  mask: np.ndarray          # float32 [C, N]; 1.0 = real example, 0.0 = padding
  num_examples: np.ndarray  # int32 [C]; = mask.sum(1)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hash by identity (arrays are unhashable)
class FederatedData:
  """All devices' (or clients') examples stored flat (CSR), so 100,000 devices fit in memory.

  Attributes:
    tokens: int32 [total_examples, max_len]; 0 = padding, 1 = <unk>, 2 = <bos>, 3 = <eos>.
    intents: int32 [total_examples].
    periods: int32 [total_examples]; the time period an example was produced in.
    offsets: int64 [num_devices + 1]; device d owns rows offsets[d]:offsets[d + 1].
    vocab: the words of the token ids.
    intent_names: the names of the intent ids.

  Example:
    >>> data.device_rows(3)            # rows of device 3
    >>> tokens, intents = data.pooled()  # centralized baseline
  """
  tokens: np.ndarray
  intents: np.ndarray
  periods: np.ndarray
  offsets: np.ndarray
  vocab: tuple[str, ...]
  intent_names: tuple[str, ...]

  def __post_init__(self):
    n = len(self.tokens)
    if self.tokens.ndim != 2 or len(self.intents) != n or len(self.periods) != n:
      raise ValueError(f"tokens {self.tokens.shape}, intents {self.intents.shape} and periods "
                       f"{self.periods.shape} must have the same number of rows")
    if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0 or self.offsets[-1] != n:
      raise ValueError(f"offsets must start at 0 and end at {n} (the number of examples)")
    if np.any(np.diff(self.offsets) < 0):
      raise ValueError("offsets must be non-decreasing")

  @property
  def num_devices(self) -> int:
    return len(self.offsets) - 1

  @property
  def max_len(self) -> int:
    return self.tokens.shape[1]

  def num_examples(self) -> np.ndarray:
    """int64 [num_devices]: examples per device."""
    return np.diff(self.offsets)

  def device_rows(self, d: int) -> np.ndarray:
    """Row indices of device d."""
    if not 0 <= d < self.num_devices:
      raise ValueError(f"device {d} out of range [0, {self.num_devices})")
    return np.arange(self.offsets[d], self.offsets[d + 1])

  def device_of_rows(self) -> np.ndarray:
    """int64 [total_examples]: the device that owns each row."""
    return np.repeat(np.arange(self.num_devices), self.num_examples())

  def regroup(self, rows: np.ndarray, counts: np.ndarray) -> "FederatedData":
    """A FederatedData with the given rows (in order), client c owning the next counts[c]."""
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    if offsets[-1] != len(rows):
      raise ValueError(f"counts sum to {offsets[-1]} but {len(rows)} rows were given")
    return dataclasses.replace(self, tokens=self.tokens[rows], intents=self.intents[rows],
                               periods=self.periods[rows], offsets=offsets)

  def client_batch(self, device_ids: Sequence[int], max_examples: int,
                   rng: np.random.Generator | None = None) -> ClientBatch:
    """Padded examples of some devices: [len(device_ids), max_examples, max_len].

    A device with more than `max_examples` examples contributes a uniform random subset
    (drawn from `rng`, kept in chronological order) or, with rng None, its first ones.
    """
    ids = np.asarray(device_ids, np.int64).reshape(-1)
    if max_examples < 1:
      raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_devices):
      raise ValueError(f"device_ids must be in [0, {self.num_devices})")
    counts = self.num_examples()[ids]
    take = np.minimum(counts, max_examples)
    slot = np.arange(max_examples)[None]
    mask = slot < take[:, None]
    rows = self.offsets[ids][:, None] + slot
    if rng is not None:
      for i in np.nonzero(counts > max_examples)[0]:
        rows[i] = self.offsets[ids[i]] + np.sort(rng.choice(counts[i], max_examples, replace=False))
    tokens = np.zeros(mask.shape + (self.max_len,), np.int32)
    intents = np.zeros(mask.shape, np.int32)
    tokens[mask] = self.tokens[rows[mask]]
    intents[mask] = self.intents[rows[mask]]
    return ClientBatch(tokens, intents, mask.astype(np.float32), take.astype(np.int32))

  def pooled(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, intents) of all devices: the centralized baseline's training set."""
    return self.tokens, self.intents


def build_vocab() -> tuple[str, ...]:
  """Reserved tokens, then every word of the templates and slot values, sorted."""
  words = set()
  for templates in INTENTS.values():
    for t in templates:
      words.update(w for w in t.split() if not w.startswith("{"))
  for values in SLOTS.values():
    for v in values:
      words.update(v.split())
  return RESERVED + tuple(sorted(words))


def encode_texts(texts: Sequence[str], vocab: Sequence[str], *, max_len: int = 16) -> np.ndarray:
  """Encodes texts as <bos> words <eos>, truncated/padded to int32 [len(texts), max_len].

  Words are lower-cased and split on white space; unknown words become <unk> (1).

  Example:
    >>> encode_texts(["set a timer"], build_vocab(), max_len=6)   # [[2, a, b, c, 3, 0]]
  """
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2 (room for <bos> and one word), got {max_len}")
  index = {w: i for i, w in enumerate(vocab)}
  out = np.zeros((len(texts), max_len), np.int32)
  for r, text in enumerate(texts):
    ids = [BOS] + [index.get(w, UNK) for w in text.lower().split()] + [EOS]
    ids = ids[:max_len]
    out[r, :len(ids)] = ids
  return out


def decode(tokens: np.ndarray, vocab: Sequence[str]) -> list[str]:
  """The words of token rows [N, L], without reserved tokens (inverse of encode_texts)."""
  return [" ".join(vocab[t] for t in row if t > EOS) for row in np.asarray(tokens)]


@functools.lru_cache(maxsize=8)
def _tables(vocab: tuple[str, ...]):
  """Token tables: per slot type [num_values, max_words] (0-padded) and lengths; templates as parts."""
  index = {w: i for i, w in enumerate(vocab)}

  def table(values):
    split = [v.split() for v in values]
    width = max(1, max(len(s) for s in split))
    tok = np.zeros((len(values), width), np.int32)
    for i, s in enumerate(split):
      tok[i, :len(s)] = [index[w] for w in s]
    return tok, np.array([len(s) for s in split], np.int64)

  slots = {name: table(values) for name, values in SLOTS.items()}
  templates = []  # (intent id, [("words", tok [1, w], len [1]) | ("slot", name)])
  for intent, (_, temps) in enumerate(INTENTS.items()):
    for t in temps:
      parts, words = [], []
      for w in t.split():
        if w.startswith("{"):
          if words:
            parts.append(("words", table([" ".join(words)])))
            words = []
          parts.append(("slot", w[1:-1]))
        else:
          words.append(w)
      if words:
        parts.append(("words", table([" ".join(words)])))
      templates.append((intent, parts))
  return slots, templates


def _example_counts(rng: np.random.Generator, num_devices: int, zipf_a: float, mean: float,
                    cap: int) -> np.ndarray:
  """Capped power-law counts: clip(floor(s * X), 1, cap), X Pareto with density ~ x^-zipf_a,
  the scale s found by bisection so that the mean is `mean`."""
  grid = ((np.arange(20000) + 0.5) / 20000) ** (-1.0 / (zipf_a - 1.0))  # quantiles of X
  expected = lambda s: np.clip(np.floor(s * grid), 1, cap).mean()
  lo, hi = 0.0, float(cap)
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if expected(mid) < mean else (lo, mid)
  x = rng.random(num_devices) ** (-1.0 / (zipf_a - 1.0))
  return np.clip(np.floor(hi * x), 1, cap).astype(np.int64)


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
  """One draw per row of probs [N, K] (rows sum to 1)."""
  cum = np.cumsum(probs, axis=1, dtype=np.float32)
  u = rng.random(len(probs), dtype=np.float32) * cum[:, -1]
  return np.minimum((cum < u[:, None]).sum(1), probs.shape[1] - 1)


def _check(num_devices, num_periods, mean_examples, zipf_a, max_examples_per_device, max_len, drift):
  if int(num_devices) != num_devices or num_devices <= 0:
    raise ValueError(f"num_devices must be a positive integer, got {num_devices}")
  if int(num_periods) != num_periods or num_periods <= 0:
    raise ValueError(f"num_periods must be a positive integer, got {num_periods}")
  if not zipf_a > 1.0:
    raise ValueError(f"zipf_a must be > 1 (a power law with a finite normalizer), got {zipf_a}")
  if int(max_examples_per_device) != max_examples_per_device or max_examples_per_device < 1:
    raise ValueError(f"max_examples_per_device must be a positive integer, got {max_examples_per_device}")
  if not 1.0 <= mean_examples <= max_examples_per_device:
    raise ValueError(f"mean_examples must be in [1, max_examples_per_device={max_examples_per_device}], "
                     f"got {mean_examples}")
  if int(max_len) != max_len or max_len < 2:
    raise ValueError(f"max_len must be an integer >= 2 (room for <bos> and one word), got {max_len}")
  if not 0.0 <= drift <= 1.0:
    raise ValueError(f"drift must be in [0, 1], got {drift}")


def _generate(num_devices: int, seed: int, stream: int, num_periods: int, mean_examples: float,
              zipf_a: float, max_examples_per_device: int, max_len: int, drift: float) -> FederatedData:
  # Long because it is one vectorised pass over all devices (world tables, per-device mixes, activity,
  # periods, rendering); splitting it would pass a dozen arrays between the parts.
  _check(num_devices, num_periods, mean_examples, zipf_a, max_examples_per_device, max_len, drift)
  vocab = build_vocab()
  slots, templates = _tables(vocab)
  names = tuple(INTENTS)
  num_intents = len(names)
  template_intent = np.array([i for i, _ in templates])
  templates_per_intent = np.bincount(template_intent, minlength=num_intents)
  first_template = np.concatenate([[0], np.cumsum(templates_per_intent)[:-1]])

  # The world: shared by training and held-out devices of the same seed.
  streams = rng_lib.Streams(seed)
  world = streams.numpy("fedlearn/world")
  prior = world.dirichlet(np.full(num_intents, 4.0))
  popularity = {}
  for name, (tok, _) in slots.items():
    w = 1.0 / np.arange(1, len(tok) + 1) ** 1.1  # Zipfian popularity of slot values
    popularity[name] = w[world.permutation(len(tok))] / w.sum()

  rng = streams.numpy("fedlearn/devices", stream)
  d_num = int(num_devices)
  counts = _example_counts(rng, d_num, zipf_a, mean_examples, max_examples_per_device)
  mix = rng.dirichlet(_INTENT_CONCENTRATION * prior, size=(2, d_num)).astype(np.float32)
  template_pref = rng.random((d_num, num_intents), dtype=np.float32)
  favourites = {name: rng.choice(len(p), size=(d_num, _NUM_FAVOURITES), p=p).astype(np.int32)
                for name, p in popularity.items()}
  prefix_prob = rng.random(d_num, dtype=np.float32)
  if num_periods > 1:
    activity = rng.dirichlet(np.ones(num_periods), size=d_num)
    per_period = rng.multinomial(counts, activity)  # [D, P]
  else:
    per_period = counts[:, None]
  # Rows come out device-major, periods ascending: chronological within each device.
  device = np.repeat(np.repeat(np.arange(d_num), num_periods), per_period.ravel())
  period = np.repeat(np.tile(np.arange(num_periods, dtype=np.int32), d_num), per_period.ravel())
  total = len(device)

  # Intent: the period's mix is (1 - w) * mix_0 + w * mix_1 with w = drift * period / (P - 1);
  # a coin choosing the mix draws from exactly that mixture.
  w = drift * period / max(num_periods - 1, 1)
  which = (rng.random(total, dtype=np.float32) < w).astype(np.int64)
  intent = np.empty(total, np.int64)
  chunk = 1 << 20  # bounds the [chunk, num_intents] temporaries
  for s in range(0, total, chunk):
    sl = slice(s, s + chunk)
    intent[sl] = _categorical(rng, mix[which[sl], device[sl]])
  preferred = (template_pref[device, intent] * templates_per_intent[intent]).astype(np.int64)
  uniform = (rng.random(total) * templates_per_intent[intent]).astype(np.int64)
  use_pref = rng.random(total) < _TEMPLATE_PREF_PROB
  template = first_template[intent] + np.where(use_pref, preferred, uniform)

  def slot_values(name, dev):
    fav = favourites[name][dev, rng.integers(0, _NUM_FAVOURITES, len(dev))]
    glob = rng.choice(len(popularity[name]), size=len(dev), p=popularity[name])
    return np.where(rng.random(len(dev)) < _FAVOURITE_PROB, fav, glob)

  tokens = np.zeros((total, max_len), np.int32)
  tokens[:, 0] = BOS

  def write(rows, cursor, tok, lengths):
    pos = cursor[:, None] + np.arange(tok.shape[1])[None]
    ok = (np.arange(tok.shape[1])[None] < lengths[:, None]) & (pos < max_len)
    tokens[np.broadcast_to(rows[:, None], pos.shape)[ok], pos[ok]] = tok[ok]
    return cursor + lengths

  # A device's favourite wake phrase with its own probability, otherwise none.
  cursor = np.ones(total, np.int64)
  with_prefix = rng.random(total, dtype=np.float32) < prefix_prob[device] * 0.5
  prefix = np.where(with_prefix, favourites["prefix"][device, 0], 0)
  ptok, plen = slots["prefix"]
  cursor = write(np.arange(total), cursor, ptok[prefix], plen[prefix])

  for t, (_, parts) in enumerate(templates):
    rows = np.nonzero(template == t)[0]
    if not rows.size:
      continue
    c = cursor[rows]
    for kind, value in parts:
      if kind == "words":
        tok, lengths = value
        c = write(rows, c, np.broadcast_to(tok, (len(rows), tok.shape[1])), np.broadcast_to(lengths, len(rows)))
      else:
        tok, lengths = slots[value]
        v = slot_values(value, device[rows])
        c = write(rows, c, tok[v], lengths[v])
    cursor[rows] = c
  has_room = cursor < max_len
  tokens[np.nonzero(has_room)[0], cursor[has_room]] = EOS
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return FederatedData(tokens, intent.astype(np.int32), period.astype(np.int32), offsets, vocab, names)


def generate_population(num_devices: int, *, seed: int, num_periods: int = 1, mean_examples: float = 20.0,
                        zipf_a: float = 1.5, max_examples_per_device: int = 500, max_len: int = 16,
                        drift: float = 0.3) -> FederatedData:
  """The training devices of a simulated population (see the module docstring).

  Args:
    num_devices: number of devices (users).
    seed: seeds the world (intent prior, slot popularity) and the devices.
    num_periods: consecutive time periods; a device's examples are spread over them.
    mean_examples: about the mean number of examples per device (over all periods).
    zipf_a: power-law exponent of the activity (> 1; smaller means heavier tails).
    max_examples_per_device: cap on a device's examples.
    max_len: token length of an example (<bos> words <eos>, truncated, 0-padded).
    drift: weight of a device's second intent mix in the last period.

  Returns:
    FederatedData with one "client" per device; deterministic in all arguments.

  Example:
    >>> data = generate_population(100_000, seed=0, num_periods=4)
  """
  return _generate(num_devices, seed, 0, num_periods, mean_examples, zipf_a, max_examples_per_device,
                   max_len, drift)


def held_out(num_devices: int, *, seed: int, num_periods: int = 1, mean_examples: float = 20.0,
             zipf_a: float = 1.5, max_examples_per_device: int = 500, max_len: int = 16,
             drift: float = 0.3) -> FederatedData:
  """Test devices: same world as `generate_population(..., seed=seed)`, other users.

  Takes the arguments of `generate_population`. The devices come from a random stream that
  training populations never use, so they are disjoint from any training devices.

  Example:
    >>> train, test = generate_population(1000, seed=0), held_out(200, seed=0)
    >>> test_tokens, test_intents = test.pooled()
  """
  return _generate(num_devices, seed, 1, num_periods, mean_examples, zipf_a, max_examples_per_device,
                   max_len, drift)
