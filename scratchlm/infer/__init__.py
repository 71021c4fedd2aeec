"""Inference: the stage that turns a trained run into text.

Today it is plain sampling from a run's checkpoint (`scratchlm infer generate`, over
`scratchlm.model.generate.generate`); the engine (KV-cache blocks, batching, scheduler, speculative
decoding) comes in a later issue, tested against that plain path. Nothing heavy is imported here.
"""
