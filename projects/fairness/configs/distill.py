"""Counterfactual role-reversal distillation (Gupta et al., Findings of ACL 2022; issue 17, part 3).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the study.
  python -m projects.fairness.main --config=projects/fairness/configs/distill.py:quick \
      --workdir=workdirs/fairness_distill
  Trains a teacher LM (dim 128, 2 layers) on generated text whose professions co-occur with
  their stereotypical gender 90% of the time (bias 0.8), then distils 1-layer dim-64 students
  from it by plain distillation (`distill`), counterfactual data augmentation (`cda`), teacher
  prediction perturbation (`perturb`) and both (`both`), 2 seeds each (one vmapped ensemble).
  Prints, per method, the gender polarity of sampled continuations of profession prompts
  (mean |profession polarity|, and signed towards the stereotype), the held-out perplexity on
  biased and on balanced text, the signed polarity on the role-neutral prompts alone and the
  gender agreement of continuations with gendered prompts (students: mean +- std over seeds), e.g.
    method    polarity         stereo.          perplexity       ppl_balanced     ...
    teacher   0.267            +0.267           2.124            2.248            ...
    distill   0.269 +- 0.003   +0.269 +- 0.003  2.124 +- 0.001   2.243 +- 0.002   ...
    both      0.048 +- 0.010   +0.009 +- 0.002  2.168 +- 0.001   2.174 +- 0.000   ...
  Writes results.json (`distillation`) and figures/distill_polarity_perplexity.png. About 4
  minutes on 2 CPU cores (measured 223-243 s end to end: teacher 36-47 s, students 148 s,
  evaluation 39 s); a rerun on the same workdir skips both trainings (about 45 s).

tiny: the same pipeline in seconds (numbers meaningless).
  python -m projects.fairness.main --config=projects/fairness/configs/distill.py:tiny --workdir=/tmp/distill_tiny
"""

import ml_collections

VARIANTS = ("quick", "tiny")


def _model(dim: int, num_layers: int, num_heads: int, num_steps: int, batch_size: int,
           learning_rate: float) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.dim = dim
  m.num_layers = num_layers
  m.num_heads = num_heads
  m.num_steps = num_steps
  m.batch_size = batch_size
  m.learning_rate = learning_rate
  m.warmup_steps = max(1, num_steps // 20)
  m.final_lr_fraction = 0.05
  m.weight_decay = 1e-4
  m.grad_clip_norm = 1.0
  m.log_every = max(1, num_steps // 10)
  return m


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/fairness/configs/distill.py:{arg}: the variant must be one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "distill"
  c.seed = 0
  c.progress = True

  c.data = ml_collections.ConfigDict()
  c.data.bias = 0.8  # P(stereotypical gender | profession) = (1 + bias) / 2 = 0.9 in the training text.
  c.data.train_examples = 20_000
  c.data.heldout_examples = 2_000  # each of the biased and the balanced held-out sets

  # The teacher's loss flattens by step ~300 and the students' by ~600 (the text is templated).
  c.teacher = _model(128, 2, 4, 600, 64, 2e-3)
  c.student = _model(64, 1, 4, 700, 64, 2e-3)

  c.distill = ml_collections.ConfigDict()
  c.distill.alpha = 0.3  # weight of the hard next-token CE; the rest on the teacher's soft targets
  c.distill.temperature = 2.0
  c.distill.mix = 0.5  # weight of the teacher's role-reversed prediction (perturb, both)
  # Map the role-reversed prediction back to the original's words (p(swap(w) | swap(x)), applied at
  # every position) as Gupta et al. do; False: the unmapped mixture, on gendered prefixes only.
  c.distill.map_reversed = True
  c.distill.seeds = 2  # students per method (seeds differ in initialization and batch order)

  c.generate = ml_collections.ConfigDict()
  c.generate.samples_per_prompt = 20  # x 108 prompts (12 professions x 9)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500

  if arg == "tiny":
    c.data.train_examples = 300
    c.data.heldout_examples = 64
    c.teacher = _model(16, 1, 2, 6, 8, 2e-3)
    c.student = _model(8, 1, 2, 6, 8, 2e-3)
    c.distill.seeds = 2
    c.generate.samples_per_prompt = 1
    c.eval.batch_size = 32
  return c
