"""Seeded transcript grammars for the synthetic corpus.

Two grammars:
  * `digits`: connected digit strings ("four oh seven two"), the quick task.
  * `sentences`: voice-assistant commands and questions over a vocabulary of several
    hundred words ("set a timer for twenty minutes", "what is the weather in leeds on
    friday").

All words are lowercase ASCII letters and apostrophes, so transcripts are valid input
for `libs.speech.tokenizer.CharTokenizer` as they are.

Example:
  >>> rng = np.random.default_rng(0)
  >>> GRAMMARS["digits"](rng)
  'seven oh one'
"""

from __future__ import annotations

from typing import Callable

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Weights of string lengths 1..7 (as in TIDIGITS, most strings have 2-5 digits).
_DIGIT_LENGTH_WEIGHTS = np.array([0.06, 0.16, 0.22, 0.22, 0.16, 0.10, 0.08])
# The closed vocabulary of `digits` and its longest string in words: public facts of the
# grammar (a word-level model's output units, the cap on PATE queries per utterance).
DIGITS_VOCABULARY = ("oh",) + DIGIT_WORDS
DIGITS_MAX_WORDS = len(_DIGIT_LENGTH_WEIGHTS)


def digits(rng: np.random.Generator) -> str:
  """A connected digit string of 1 to 7 digits; zero is read "oh" or "zero"."""
  n = 1 + rng.choice(len(_DIGIT_LENGTH_WEIGHTS), p=_DIGIT_LENGTH_WEIGHTS / _DIGIT_LENGTH_WEIGHTS.sum())
  words = []
  for d in rng.integers(0, 10, size=n):
    if d == 0:
      words.append("oh" if rng.random() < 0.6 else "zero")
    else:
      words.append(DIGIT_WORDS[d])
  return " ".join(words)


_ONES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
          "seventeen", "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty")


def number_words(n: int) -> str:
  """English words for 1 <= n <= 59."""
  if not 1 <= n <= 59:
    raise ValueError(f"n must be in [1, 59], got {n}")
  if n < 10:
    return _ONES[n - 1]
  if n < 20:
    return _TEENS[n - 10]
  tens, ones = divmod(n, 10)
  return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones - 1])


_CITIES = (
    "london", "leeds", "glasgow", "edinburgh", "manchester", "liverpool", "birmingham",
    "bristol", "cardiff", "belfast", "dublin", "york", "oxford", "cambridge", "brighton",
    "aberdeen", "dundee", "preston", "lancaster", "coventry", "boston", "chicago", "denver",
    "seattle", "houston", "dallas", "atlanta", "miami", "phoenix", "portland", "austin",
    "brooklyn", "queens", "kingston", "montego bay", "nassau", "bridgetown", "toronto",
    "paris", "berlin", "madrid", "rome", "tokyo", "sydney", "nairobi", "lagos", "delhi",
)
_NAMES = (
    "mum", "dad", "grandma", "grandpa", "anna", "ben", "carla", "david", "emma", "fiona",
    "george", "hannah", "ian", "james", "kate", "liam", "maria", "nina", "oliver", "paul",
    "rachel", "sam", "tom", "uma", "victor", "william", "zoe", "aisha", "marcus", "keisha",
    "dwayne", "shanice", "callum", "morag", "rhys", "siobhan", "jamal", "priya", "chen",
)
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
         "today", "tomorrow", "tonight", "this weekend", "next week")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")
_GENRES = ("jazz", "reggae", "rock", "pop", "classical", "hip hop", "blues", "folk",
           "country", "soul", "dance", "metal", "calypso", "gospel", "indie")
_MOODS = ("relaxing", "happy", "quiet", "upbeat", "old", "new", "party", "morning",
          "evening", "workout", "study", "sleep")
_ITEMS = (
    "milk", "bread", "eggs", "butter", "cheese", "apples", "bananas", "oranges", "rice",
    "pasta", "tomatoes", "potatoes", "onions", "carrots", "chicken", "fish", "beans",
    "coffee", "tea", "sugar", "salt", "pepper", "flour", "yoghurt", "juice", "water",
    "biscuits", "cereal", "soap", "shampoo", "toothpaste", "batteries", "bin bags",
    "nappies", "plantain", "mangoes", "avocados", "lemons", "garlic", "ginger", "honey",
    "jam", "oats", "crisps", "chocolate", "ice cream", "spinach", "lettuce", "peppers",
)
_ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "hallway", "garage", "office",
          "garden", "dining room", "nursery")
_DEVICES = ("lights", "heating", "fan", "television", "radio", "speaker", "kettle",
            "oven", "washing machine", "air conditioning", "alarm", "lamp")
_TASKS = (
    "call the doctor", "take my medicine", "feed the cat", "walk the dog", "water the plants",
    "pay the rent", "buy a present", "book a table", "pick up the kids", "send the report",
    "check the post", "charge my phone", "lock the door", "put the bins out", "ring my sister",
    "renew my passport", "cancel the meeting", "clean the car", "cook dinner",
    "collect the parcel", "email my boss", "visit grandma", "go to the gym", "pack my bag",
)
_PLACES = ("the station", "the airport", "the hospital", "the nearest pharmacy", "the library",
           "the beach", "the town centre", "the supermarket", "the post office", "the park",
           "the museum", "the school", "the bank", "the cinema", "my office", "home")
_WEATHER_WORDS = ("rain", "snow", "sunshine", "wind", "fog", "a storm", "thunder", "frost")
_QUANTITIES = ("a", "two", "three", "four", "six", "a dozen", "some", "more")
_UNITS = ("minutes", "hours", "seconds")
_QUESTIONS = (
    "what time is it", "what day is it", "how old is the moon", "who won the match",
    "what is the capital of {country}", "how far is the sun", "how do you spell {word}",
    "what does {word} mean", "how many days are in {month}", "who wrote the song",
    "is it going to {weather} {day}", "when is the next bus to {city}",
    "what is on the news", "how tall is the tallest building", "why is the sky blue",
    "can you tell me a joke", "what should i cook tonight", "where is my phone",
)
_COUNTRIES = ("france", "spain", "italy", "japan", "kenya", "nigeria", "india", "canada",
              "jamaica", "scotland", "wales", "ireland", "brazil", "mexico", "egypt", "china")
_WORDS_TO_SPELL = ("necessary", "rhythm", "weather", "colour", "tomorrow", "separate",
                   "beautiful", "february", "island", "knowledge", "restaurant", "business")


def _choice(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


_TEMPLATES: tuple[Callable[[np.random.Generator], str], ...] = (
    lambda r: f"set a timer for {number_words(int(r.integers(1, 60)))} {_choice(r, _UNITS)}",
    lambda r: f"set an alarm for {number_words(int(r.integers(1, 13)))} {_choice(r, ('am', 'pm', 'o clock'))}",
    lambda r: f"what is the weather in {_choice(r, _CITIES)} {_choice(r, _DAYS)}",
    lambda r: f"will there be {_choice(r, _WEATHER_WORDS)} in {_choice(r, _CITIES)} {_choice(r, _DAYS)}",
    lambda r: f"play some {_choice(r, _MOODS)} {_choice(r, _GENRES)} music",
    lambda r: f"play {_choice(r, _GENRES)} in the {_choice(r, _ROOMS)}",
    lambda r: f"turn {_choice(r, ('on', 'off'))} the {_choice(r, _DEVICES)} in the {_choice(r, _ROOMS)}",
    lambda r: f"{_choice(r, ('dim', 'brighten'))} the {_choice(r, _ROOMS)} lights",
    lambda r: f"set the heating to {number_words(int(r.integers(15, 26)))} degrees",
    lambda r: f"add {_choice(r, _QUANTITIES)} {_choice(r, _ITEMS)} to my shopping list",
    lambda r: f"remove {_choice(r, _ITEMS)} from my shopping list",
    lambda r: f"call {_choice(r, _NAMES)}",
    lambda r: f"send a message to {_choice(r, _NAMES)} saying i will be {_choice(r, ('late', 'early', 'home soon', 'there at ' + number_words(int(r.integers(1, 13)))))}",
    lambda r: f"remind me to {_choice(r, _TASKS)} {_choice(r, _DAYS)}",
    lambda r: f"remind me to {_choice(r, _TASKS)} at {number_words(int(r.integers(1, 13)))}",
    lambda r: f"how do i get to {_choice(r, _PLACES)}",
    lambda r: f"how long will it take to drive to {_choice(r, _CITIES)}",
    lambda r: f"book a taxi to {_choice(r, _PLACES)} {_choice(r, _DAYS)}",
    lambda r: f"what is on my calendar {_choice(r, _DAYS)}",
    lambda r: f"when is {_choice(r, _NAMES)}'s birthday",
    lambda r: f"schedule a meeting with {_choice(r, _NAMES)} on the {_choice(r, ('first', 'second', 'third', 'tenth', 'twentieth'))} of {_choice(r, _MONTHS)}",
    lambda r: (_choice(r, _QUESTIONS).format(
        country=_choice(r, _COUNTRIES), word=_choice(r, _WORDS_TO_SPELL), month=_choice(r, _MONTHS),
        weather=_choice(r, ("rain", "snow")), day=_choice(r, _DAYS), city=_choice(r, _CITIES))),
    lambda r: f"{_choice(r, ('pause', 'stop', 'resume', 'skip'))} the music",
    lambda r: f"turn the volume {_choice(r, ('up', 'down'))} to {number_words(int(r.integers(1, 11)))}",
    lambda r: f"order {_choice(r, _QUANTITIES)} {_choice(r, _ITEMS)} for delivery {_choice(r, _DAYS)}",
)


def sentences(rng: np.random.Generator) -> str:
  """A command- or question-like sentence from the assistant grammar."""
  return _choice(rng, _TEMPLATES)(rng)


GRAMMARS: dict[str, Callable[[np.random.Generator], str]] = {
    "digits": digits,
    "sentences": sentences,
}


def vocabulary(grammar: str, num_samples: int = 20000, seed: int = 0) -> set[str]:
  """Words the grammar produces (estimated by sampling), for documentation and tests."""
  rng = np.random.default_rng(seed)
  words: set[str] = set()
  for _ in range(num_samples):
    words.update(GRAMMARS[grammar](rng).split())
  return words
