"""Keyframe captions of the synthetic world's video prompts (planner ``synth-keyframes``).

The grammar says what each frame of a video should show: the prompt's object in every frame ("a red
circle moving left", "a static red circle"), and for a color change the old color over the first
third of the frames and the new one over the last third ("a red square turning blue": "a red square"
… "a blue square"), as :func:`mmalign.synth.render.render_video_spec` switches color between T/3 and
2T/3; the frames in between are left out. A card names the planner in ``video.captions`` (with
``plugin: mmalign.synth.keyframes``) so an image scorer such as synth-hps checks the change, which it
cannot against the whole prompt (see :mod:`mmalign.scoring.video`). The same name in ``STILL_SHOTS`` says
which prompts ask for a still shot: "a static …", whose object stays where it is (a card's
``video.still_weight``).
"""

from __future__ import annotations

from mmalign.scoring.video import FRAME_CAPTIONS, STILL_SHOTS
from mmalign.synth.prompts import parse_prompt


@FRAME_CAPTIONS.register("synth-keyframes")
def synth_keyframes(prompt: str, num_frames: int) -> list[str | None]:
    """One caption per frame (None for the middle third of a color change)."""
    spec = parse_prompt(prompt, "video")
    color, shape = spec.objects[0]
    if spec.kind != "change":
        return [f"a {color} {shape}"] * num_frames
    return [f"a {color} {shape}" if t < num_frames / 3 else f"a {spec.color_to} {shape}" if t >= 2 * num_frames / 3 else None
            for t in range(num_frames)]


@STILL_SHOTS.register("synth-keyframes")
def synth_still_shot(prompt: str) -> bool:
    """True for the grammar's static prompts ("a static red circle")."""
    return parse_prompt(prompt, "video").kind == "static"
