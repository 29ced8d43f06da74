"""Reads a TensorBoard log directory with TensorBoard's own loader and prints it as JSON.

Used by tests/tensorboard_events.rs to check that hist's event writer produces files the
real `tensorboard` package accepts. Usage: read_tensorboard.py <logdir>

Output: {"file_version": float, "scalars": {tag: [[step, value], ...]},
         "text": {tag: [[step, text], ...]}, "tensors": {tag: [[step, dtype, shape], ...]}}
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: read_tensorboard.py <logdir>")
    # 0 keeps every event; the defaults would down-sample and hide missing steps.
    guidance = {key: 0 for key in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance=guidance)
    acc.Reload()
    tags = acc.Tags()

    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in tags["scalars"]
    }
    try:
        text_tags = set(acc.PluginTagToContent("text"))
    except KeyError:  # no text summaries were written
        text_tags = set()
    text, tensors = {}, {}
    for tag in tags["tensors"]:
        events = acc.Tensors(tag)
        tensors[tag] = [
            [e.step, e.tensor_proto.dtype, [d.size for d in e.tensor_proto.tensor_shape.dim]]
            for e in events
        ]
        if tag in text_tags:
            text[tag] = [
                [e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8")]
                for e in events
            ]

    json.dump(
        {"file_version": acc.file_version, "scalars": scalars, "text": text, "tensors": tensors},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
