"""flax.linen models. Public modules (import them by name; this package re-exports nothing,
so that importing one model does not build the others):

  asr         `build_model(config.model, vocab_size)` for the transducer/CTC families,
              `MODEL_NAMES`, `init_fn`/`init_params` (jitted init, vmappable for ensembles)
  transducer  RNN-Transducer with batched greedy decoding (beam search: libs.speech.beam_search)
  ctc         CTC acoustic model and its greedy decoding
  encoders    LSTM, Conformer and ConvRNN-T acoustic encoders (`EncoderConfig`, `ENCODER_KINDS`)
  lstm        fused (bi)LSTM layer for padded batches
  lm          small causal Transformer language model
  pooling     pooling with finite gradients on every backend
  speaker     speaker embedding (`SpeakerEncoder`), pairwise metric loss, adversarial reweighting

Example:
  >>> from libs.models import asr
  >>> model = asr.build_model(config.model, vocab_size=29)
"""
