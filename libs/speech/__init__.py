"""Speech: features, tokenizer, losses, WER and ASR evaluation. Public modules (import them
by name; this package re-exports nothing, so `libs.data` can import `features` alone):

  features   log-mel filterbanks, utterance normalization, SpecAugment
  tokenizer  `CharTokenizer` (blank 0, space, apostrophe, a-z)
  losses     RNN-T and CTC losses on logits
  wer        word error rate, per-utterance edit counts, pooled WER
  evaluate   running a `libs.models.asr` model: `per_example_nll`, `per_example_loss` (NLL +
             sown penalties such as the amortized encoder's compute), `make_loss_fn`,
             `spec_augment_config`, `make_decode_fn`, `transcribe`, `evaluate` -> `EvalResult`
  beam_search  transducer modified beam search (one label per frame, batched, jitted): `beam_search`
             -> `NBest`, `make_decode_fn` (a drop-in for `evaluate.make_decode_fn`)
  compute    encoder FLOPs counted on the jaxpr (scans per step), the amortized encoder's gated usage
  trainer    `train`: an ASR model trained or fine-tuned on the resumable loop (dev WER,
             checkpoints, metrics, progress bar)

Example:
  >>> from libs.speech import evaluate
  >>> evaluate.evaluate(evaluate.make_decode_fn(model), params, split, tokenizer, batch_size=64).wer
"""
