"""The benchmark: a small GPT pretraining run scored by validation bits per byte (val_bpb).

`prepare` builds corpora, tokenizer and token arrays; `evaluate` is the locked evaluator; `runtime` holds the locked
budget clock, argument parsing and reporting; `train` is the file the inner loop edits; `constants` is the grammar of
its constants block (standard library only: the search space and the candidate builder read it too); `bench` measures
speed.
"""
