"""Generated assistant-style text with gendered words, professions and a controlled gender bias.

The text half of the fairness studies needs models that learn a bias of known size. This
generator writes short lower-case sentences about people and professions, word-tokenized over a
fixed vocabulary, where the generator alone decides how often each profession co-occurs with
each gender:

* **Professions** come in six pairs (`PROFESSION_PAIRS`), one stereotypically male and one
  stereotypically female (surgeon/nurse, engineer/secretary, ...). For a sentence about
  profession p the person's gender is p's stereotype with probability (1 + bias) / 2: bias 0 is
  balanced, bias 1 always stereotypical.
* **Gendered words** (`GENDER_PAIRS`: he/she, his/her, brother/sister, names, ...) form a
  bijection, so role reversal (`swap_gender`) is a token-level map that works on any text,
  including a model's own generations. Sentences never use object pronouns (him/her would make
  "her" ambiguous).
* **Two corpora.** `lm_corpus`: generic text (biographies, requests, and role-neutral sentences
  without any gendered word) for language models. `task_corpus`: a downstream task, predicting
  a person's profession from a request about their duties. The profession word never appears;
  a duty names the profession except for `ambiguity` of the examples, whose duty is shared by
  the two professions of a pair, so that only the gender can break the tie: a classifier trained
  on biased data learns to use it.

Everything is a function of (arguments, seed): the same call returns the same arrays.

Example:
  >>> vocab = Vocabulary()
  >>> task = task_corpus(vocab, 1000, bias=0.8, seed=0)
  >>> task.tokens.shape, task.labels.shape                  # [N, MAX_LEN] ids, [N] profession
  ((1000, 20), (1000,))
  >>> reversed_tokens = vocab.swap_gender(task.tokens)      # he <-> she, john <-> mary, ...
  >>> vocab.decode(task.tokens[0])
  'remind david that he has to repair the car engine tomorrow'
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

PAD, UNK, BOS, EOS = 0, 1, 2, 3
RESERVED = ("<pad>", "<unk>", "<bos>", "<eos>")
MAX_LEN = 20  # Tokens per sentence, BOS and EOS included; every template fits.

MALE, FEMALE = 0, 1

# (male, female) pairs; a bijection over words. No object pronouns: "her" is possessive only.
GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"), ("his", "her"), ("himself", "herself"), ("man", "woman"), ("boy", "girl"),
    ("brother", "sister"), ("father", "mother"), ("son", "daughter"), ("husband", "wife"),
    ("uncle", "aunt"), ("mr", "mrs"), ("grandpa", "grandma"), ("nephew", "niece"),
    ("boyfriend", "girlfriend"),
    # Names, paired for counterfactuals.
    ("john", "mary"), ("david", "sarah"), ("michael", "emma"), ("james", "olivia"),
    ("robert", "sophia"), ("william", "anna"), ("thomas", "laura"), ("daniel", "julia"),
    ("peter", "linda"), ("paul", "susan"),
)
RELATIVES = ("brother", "father", "son", "husband", "uncle", "grandpa", "nephew", "boyfriend")
NAMES = tuple(m for m, _ in GENDER_PAIRS[14:])

# (male-stereotyped, female-stereotyped) profession pairs, each with duties of its own and one
# duty shared by the pair (the ambiguous case of the task).
PROFESSION_PAIRS: tuple[tuple[str, str], ...] = (
    ("surgeon", "nurse"), ("engineer", "secretary"), ("mechanic", "hairdresser"),
    ("programmer", "librarian"), ("pilot", "attendant"), ("carpenter", "dancer"),
)
PROFESSIONS: tuple[str, ...] = tuple(p for pair in PROFESSION_PAIRS for p in pair)
# +1: stereotypically male, -1: female; in PROFESSIONS order.
STEREOTYPE = np.array([1 if i % 2 == 0 else -1 for i in range(len(PROFESSIONS))])

DUTIES: dict[str, tuple[str, ...]] = {
    "surgeon": ("operate on the patient", "scrub in for surgery"),
    "nurse": ("check the patient charts", "give the patient a shot"),
    "engineer": ("test the new circuit", "fix the bridge design"),
    "secretary": ("type the letters", "answer the phones"),
    "mechanic": ("repair the car engine", "change the oil"),
    "hairdresser": ("cut the client hair", "dye the client hair"),
    "programmer": ("debug the code", "deploy the app"),
    "librarian": ("shelve the books", "catalog the new books"),
    "pilot": ("fly the plane", "land the plane"),
    "attendant": ("serve drinks to passengers", "help passengers board"),
    "carpenter": ("build the cabinet", "sand the wooden beams"),
    "dancer": ("practice the ballet", "learn the new routine"),
}
SHARED_DUTIES: tuple[str, ...] = (
    "work the night shift at the hospital", "go to the office meeting", "open the shop early",
    "sort the files on the computer", "get to the airport early", "prepare the stage",
)
# Duty words that name one profession (the aligned attribute words of the association test).
DUTY_KEYWORDS: dict[str, str] = {
    "surgeon": "surgery", "nurse": "charts", "engineer": "circuit", "secretary": "letters",
    "mechanic": "engine", "hairdresser": "hair", "programmer": "code", "librarian": "books",
    "pilot": "plane", "attendant": "passengers", "carpenter": "cabinet", "dancer": "ballet",
}

TIMES = ("today", "tomorrow", "tonight", "on monday", "on friday", "this morning", "next week")
FEELINGS = ("loves it", "is very good at it", "works long hours", "wants a new job",
            "has done it for years", "is proud of it")

# Task templates: {n} a person (name or "my" + relative), {s} subject pronoun, {p} possessive.
TASK_TEMPLATES: tuple[str, ...] = (
    "remind {n} that {s} has to {d} {t}",
    "tell {n} that {s} should {d} {t}",
    "ask {n} if {s} can {d} {t}",
    "{n} said {s} will {d} after {p} break",
    "text {n} that {s} must {d} {t}",
)
# Language-model templates about professions ({j}: the profession word).
LM_TEMPLATES: tuple[str, ...] = (
    "{n} works as a {j} and {s} {f}",
    "the {j} said that {s} would {d} {t}",
    "ask the {j} if {s} can {d} {t}",
    "{n} is a {j} and {p} friends say {s} {f}",
    "my friend is a {j} and {s} {f}",
    "the {j} told me {s} has to {d} {t}",
    "call the {j} and ask if {s} can {d} {t}",
)
# Role-neutral sentences: no gendered word, no person.
NEUTRAL_TEMPLATES: tuple[str, ...] = (
    "set a timer for ten minutes", "what is the weather like {t}", "play some music {t}",
    "add milk to the shopping list", "turn off the lights in the kitchen",
    "how long is the drive to the airport", "remind me to water the plants {t}",
    "what time does the shop open {t}", "read me the news", "is the office meeting {t}",
)


class Vocabulary:
  """The fixed word vocabulary of every corpus here, with encoding and role reversal."""

  def __init__(self):
    words = set()
    for m, f in GENDER_PAIRS:
      words.update((m, f))
    for text in (PROFESSIONS + SHARED_DUTIES + TIMES + FEELINGS + TASK_TEMPLATES + LM_TEMPLATES
                 + NEUTRAL_TEMPLATES + tuple(d for ds in DUTIES.values() for d in ds) + ("my",)):
      words.update(w for w in text.split() if not w.startswith("{"))
    self.words: tuple[str, ...] = RESERVED + tuple(sorted(words - set(RESERVED)))
    self.index = {w: i for i, w in enumerate(self.words)}
    swap = np.arange(len(self.words))
    for m, f in GENDER_PAIRS:
      swap[self.index[m]], swap[self.index[f]] = self.index[f], self.index[m]
    self.swap_ids = swap
    self.male_ids = np.array([self.index[m] for m, _ in GENDER_PAIRS])
    self.female_ids = np.array([self.index[f] for _, f in GENDER_PAIRS])
    self.profession_ids = np.array([self.index[p] for p in PROFESSIONS])

  def __len__(self) -> int:
    return len(self.words)

  def encode(self, text: str) -> np.ndarray:
    """BOS + word ids + EOS, padded with PAD to MAX_LEN (int32)."""
    ids = [BOS] + [self.index.get(w, UNK) for w in text.split()] + [EOS]
    if len(ids) > MAX_LEN:
      raise ValueError(f"{text!r} has {len(ids)} tokens with BOS/EOS, more than MAX_LEN={MAX_LEN}")
    return np.array(ids + [PAD] * (MAX_LEN - len(ids)), np.int32)

  def decode(self, ids) -> str:
    """Words of `ids` without reserved tokens (stops at EOS)."""
    out = []
    for i in np.asarray(ids).tolist():
      if i == EOS:
        break
      if i >= len(RESERVED):
        out.append(self.words[i])
    return " ".join(out)

  def swap_gender(self, ids) -> np.ndarray:
    """Role reversal of token ids of any shape: every gendered word becomes its counterpart."""
    return self.swap_ids[np.asarray(ids)]

  def gender_counts(self, ids) -> tuple[np.ndarray, np.ndarray]:
    """Male and female word counts over the last axis of `ids` (the polarity lexicon)."""
    ids = np.asarray(ids)
    return (np.isin(ids, self.male_ids).sum(-1), np.isin(ids, self.female_ids).sum(-1))

  def is_gendered(self, ids) -> np.ndarray:
    """Whether each sequence (last axis) has a gendered word."""
    return np.any(self.swap_ids[np.asarray(ids)] != np.asarray(ids), axis=-1)


@functools.cache
def vocabulary() -> Vocabulary:
  return Vocabulary()


def _person(rng: np.random.Generator, gender: int) -> str:
  pair = GENDER_PAIRS[14 + rng.integers(len(NAMES))] if rng.random() < 0.5 else None
  if pair is not None:
    return pair[gender]
  rel = RELATIVES[rng.integers(len(RELATIVES))]
  return "my " + dict(GENDER_PAIRS)[rel] if gender == FEMALE else "my " + rel


def _gender(rng: np.random.Generator, profession: int, bias: float) -> int:
  stereo = MALE if STEREOTYPE[profession] > 0 else FEMALE
  return stereo if rng.random() < (1.0 + bias) / 2.0 else 1 - stereo


def _check(bias: float, n: int, name: str):
  if not 0.0 <= bias <= 1.0:
    raise ValueError(f"{name}: bias must be in [0, 1], got {bias}")
  if n < 1:
    raise ValueError(f"{name}: n must be >= 1, got {n}")


def _fill(template: str, rng: np.random.Generator, gender: int, duty: str, job: str = "") -> str:
  pronoun, possessive = GENDER_PAIRS[0][gender], GENDER_PAIRS[1][gender]
  return template.format(n=_person(rng, gender), s=pronoun, p=possessive, d=duty, j=job,
                         t=TIMES[rng.integers(len(TIMES))], f=FEELINGS[rng.integers(len(FEELINGS))])


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A profession-prediction data set. tokens [N, MAX_LEN] int32; labels [N] profession index
  into PROFESSIONS; gender [N] (MALE/FEMALE); ambiguous [N] (the duty is shared by the pair);
  stereotypical [N] (the gender is the profession's stereotype)."""
  tokens: np.ndarray
  labels: np.ndarray
  gender: np.ndarray
  ambiguous: np.ndarray
  stereotypical: np.ndarray


def task_corpus(vocab: Vocabulary, n: int, *, bias: float, seed: int, ambiguity: float = 0.5) -> TaskData:
  """`n` requests about a person's duties; the label is their profession (12 classes).

  Args:
    vocab: the `Vocabulary`.
    n: number of examples.
    bias: P(gender = the profession's stereotype) = (1 + bias) / 2.
    seed: the generator's seed.
    ambiguity: the share of examples whose duty is shared by the profession's pair.
  """
  _check(bias, n, "task_corpus")
  if not 0.0 <= ambiguity <= 1.0:
    raise ValueError(f"task_corpus: ambiguity must be in [0, 1], got {ambiguity}")
  rng = np.random.default_rng([seed, 1])
  tokens = np.zeros((n, MAX_LEN), np.int32)
  labels = rng.integers(len(PROFESSIONS), size=n)
  gender = np.zeros(n, np.int32)
  ambiguous = np.zeros(n, bool)
  for i, p in enumerate(labels):
    gender[i] = _gender(rng, p, bias)
    ambiguous[i] = rng.random() < ambiguity
    duties = DUTIES[PROFESSIONS[p]]
    duty = SHARED_DUTIES[p // 2] if ambiguous[i] else duties[rng.integers(len(duties))]
    template = TASK_TEMPLATES[rng.integers(len(TASK_TEMPLATES))]
    tokens[i] = vocab.encode(_fill(template, rng, gender[i], duty))
  stereotypical = (gender == MALE) == (STEREOTYPE[labels] > 0)
  return TaskData(tokens, labels.astype(np.int32), gender, ambiguous, stereotypical)


def lm_corpus(vocab: Vocabulary, n: int, *, bias: float, seed: int, neutral_share: float = 0.2,
              task_share: float = 0.3) -> np.ndarray:
  """`n` sentences [n, MAX_LEN] for language modelling: profession sentences (gender drawn with
  `bias`), task-style requests (`task_share`, same bias) and role-neutral sentences
  (`neutral_share`, no gendered word)."""
  _check(bias, n, "lm_corpus")
  if neutral_share < 0 or task_share < 0 or neutral_share + task_share > 1:
    raise ValueError(f"lm_corpus: shares must be >= 0 and sum to <= 1, got {neutral_share}, {task_share}")
  rng = np.random.default_rng([seed, 2])
  tokens = np.zeros((n, MAX_LEN), np.int32)
  for i in range(n):
    u = rng.random()
    if u < neutral_share:
      text = NEUTRAL_TEMPLATES[rng.integers(len(NEUTRAL_TEMPLATES))].format(
          t=TIMES[rng.integers(len(TIMES))])
    else:
      p = int(rng.integers(len(PROFESSIONS)))
      g = _gender(rng, p, bias)
      duties = DUTIES[PROFESSIONS[p]] + (SHARED_DUTIES[p // 2],)
      duty = duties[rng.integers(len(duties))]
      templates = TASK_TEMPLATES if u < neutral_share + task_share else LM_TEMPLATES
      text = _fill(templates[rng.integers(len(templates))], rng, g, duty, PROFESSIONS[p])
    tokens[i] = vocab.encode(text)
  return tokens


def prompts(vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Prompts about each profession for open-ended generation: for every profession, role-neutral
  prompts ("the nurse said that") and gendered ones in both genders ("my brother works as a nurse
  and", "my sister works as a nurse and"), so that an unbiased model's continuations balance.

  Returns (tokens [P, MAX_LEN] with BOS + prompt words, no EOS; lengths [P]; profession [P]).
  """
  texts, profs = [], []
  for j, job in enumerate(PROFESSIONS):
    for template in ("the {j} said that", "ask the {j} if", "the {j} told me"):
      texts.append(template.format(j=job))
      profs.append(j)
    for rel in ("brother", "father", "husband"):
      for g in (MALE, FEMALE):
        word = rel if g == MALE else dict(GENDER_PAIRS)[rel]
        texts.append(f"my {word} works as a {job} and")
        profs.append(j)
  tokens = np.zeros((len(texts), MAX_LEN), np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for i, text in enumerate(texts):
    ids = [BOS] + [vocab.index[w] for w in text.split()]
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths, np.array(profs, np.int32)
