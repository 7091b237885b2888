"""The synthetic world: a prompt grammar with train / held-out splits (:mod:`~mmalign.synth.prompts`),
renderers with exact ground truth (:mod:`~mmalign.synth.render`), an exact oracle
(:mod:`~mmalign.synth.oracle`) and simulated annotators (:mod:`~mmalign.synth.annotators`).

It wires itself into the generic layers through plug-ins that cards and suite files name: the oracle
as a scorer (:mod:`~mmalign.synth.scorer`), benchmark backbones (:mod:`~mmalign.synth.bench`); and it
studies them: the human alignment of benchmark dimensions (:mod:`~mmalign.synth.human_alignment`). The
shipped models trained on this world are built by the scripts of :mod:`mmalign.zoo`.
"""
