"""Reads a TensorBoard log directory with TensorBoard's own loaders and plugins and prints
what TensorBoard would show, as JSON.

Used by tests/tensorboard_events.rs to check that hist's writers produce files the real
`tensorboard` package accepts. Usage:

    read_tensorboard.py <logdir> [<reference.json>]

<logdir> must hold exactly one run (event files in it or in one sub-folder). Two loading
paths are used, as TensorBoard itself does: the classic `EventAccumulator` (scalars, text,
images, histograms, raw tensors) and the data provider + plugins behind today's
dashboards (images and histograms as their plugins store them, the HParams plugin's
experiment and session groups, the embedding projector's HTTP routes).

<reference.json>, optional: {"histograms": {tag: {step: [values]}}}; for each series the
output gets numpy's `histogram(values, bins=30)` under "numpy_histograms", an
independent reference for the bucket counts.

Output keys: file_version, run, scalars {tag: [[step, value]]}, text {tag: [[step, text]]},
tensors {tag: [[step, dtype, shape]]}, images {tag: [[step, width, height, png_format,
png_mode, png_width, png_height, pixels_hex]]}, image_blobs {tag: [[step, width, height,
same_png_as_legacy]]}, histograms {tag: [[step, min, max, num, sum, sum_squares,
bucket_limit, bucket]]}, histogram_buckets {tag: [[step, [[left, right, count]]]]},
hparams {experiment, session_start_info, session_end_info: parsed plugin data as JSON,
steps: {tag: [step]}}, hparams_plugin {experiment, session_groups} (route responses),
projector {runs, config, tensors {name: rows}, metadata {name: text}, sprites {name:
[mode, width, height, pixels_hex]}}, numpy_histograms {tag: {step: [counts, edges]}}.
"""
import io
import json
import sys

import numpy as np
from google.protobuf import json_format
from PIL import Image
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.projector import projector_plugin
from tensorboard.util import tensor_util
from werkzeug import test as werkzeug_test

EXPERIMENT = ""  # a local logdir is the one unnamed experiment


def classic(run_path):
    """Everything the classic EventAccumulator reads from one run."""
    # 0 keeps every event; the defaults would down-sample and hide missing steps.
    guidance = {key: 0 for key in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    acc = event_accumulator.EventAccumulator(run_path, size_guidance=guidance)
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
    images = {}
    for tag in tags["images"]:
        images[tag] = []
        for e in acc.Images(tag):
            png = Image.open(io.BytesIO(e.encoded_image_string))
            images[tag].append(
                [e.step, e.width, e.height, png.format, png.mode, png.width, png.height,
                 png.tobytes().hex()]
            )
    histograms = {
        tag: [
            [e.step, h.min, h.max, h.num, h.sum, h.sum_squares, list(h.bucket_limit),
             list(h.bucket)]
            for e in acc.Histograms(tag)
            for h in [e.histogram_value]
        ]
        for tag in tags["histograms"]
    }
    legacy_pngs = {
        (tag, e.step): e.encoded_image_string for tag in tags["images"] for e in acc.Images(tag)
    }
    return {
        "file_version": acc.file_version,
        "scalars": scalars,
        "text": text,
        "tensors": tensors,
        "images": images,
        "histograms": histograms,
    }, legacy_pngs


def dashboards(logdir, legacy_pngs):
    """What today's dashboards get: data provider, HParams plugin, projector plugin."""
    keep_all = {"images": 0, "histograms": 0, "hparams": 0, "text": 0, "scalars": 0}
    mux = plugin_event_multiplexer.EventMultiplexer(
        size_guidance={key: 0 for key in event_accumulator.DEFAULT_SIZE_GUIDANCE},
        tensor_size_guidance=keep_all,
    )
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    runs = sorted(mux.Runs())
    if len(runs) != 1:
        sys.exit(f"expected exactly one run in {logdir}, found {runs}")
    run = runs[0]
    provider = tb_data_provider.MultiplexerDataProvider(mux, logdir)
    ctx = tb_context.RequestContext()

    image_blobs = {}
    blobs = provider.read_blob_sequences(
        ctx, experiment_id=EXPERIMENT, plugin_name="images", downsample=10**9
    )
    for tag, data in blobs.get(run, {}).items():
        image_blobs[tag] = []
        for datum in data:
            width, height, png = (
                provider.read_blob(ctx, blob_key=ref.blob_key) for ref in datum.values
            )
            image_blobs[tag].append(
                [datum.step, int(width), int(height), png == legacy_pngs.get((tag, datum.step))]
            )

    histogram_buckets = {}
    tensors = provider.read_tensors(
        ctx, experiment_id=EXPERIMENT, plugin_name="histograms", downsample=10**9
    )
    for tag, data in tensors.get(run, {}).items():
        histogram_buckets[tag] = [[d.step, d.numpy.tolist()] for d in data]

    hparams = {"steps": {}}
    listing = provider.list_tensors(
        ctx, experiment_id=EXPERIMENT, plugin_name=hparams_metadata.PLUGIN_NAME
    )
    parsers = {
        hparams_metadata.EXPERIMENT_TAG: ("experiment", hparams_metadata.parse_experiment_plugin_data),
        hparams_metadata.SESSION_START_INFO_TAG: (
            "session_start_info", hparams_metadata.parse_session_start_info_plugin_data),
        hparams_metadata.SESSION_END_INFO_TAG: (
            "session_end_info", hparams_metadata.parse_session_end_info_plugin_data),
    }
    for tag, series in listing.get(run, {}).items():
        key, parse = parsers[tag]
        hparams[key] = json_format.MessageToDict(parse(series.plugin_content))
    read = provider.read_tensors(
        ctx, experiment_id=EXPERIMENT, plugin_name=hparams_metadata.PLUGIN_NAME, downsample=10**9
    )
    for tag, data in read.get(run, {}).items():
        hparams["steps"][tag] = [d.step for d in data]

    context = base_plugin.TBContext(logdir=logdir, data_provider=provider, multiplexer=mux)
    hp_client = werkzeug_test.Client(_routes(hparams_plugin.HParamsPlugin(context)))
    hparams_plugin_out = {
        "experiment": _post_json(hp_client, "/experiment", {"experimentName": EXPERIMENT}),
        "session_groups": _post_json(
            hp_client, "/session_groups",
            {"experimentName": EXPERIMENT, "startIndex": 0, "sliceSize": 100,
             "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                 "STATUS_RUNNING"],
             "includeMetrics": True},
        ),
    }

    projector = _projector(context)
    return run, {
        "image_blobs": image_blobs,
        "histogram_buckets": histogram_buckets,
        "hparams": hparams,
        "hparams_plugin": hparams_plugin_out,
        "projector": projector,
    }


def _routes(plugin):
    """One WSGI app dispatching the plugin's routes, as TensorBoard mounts them."""
    apps = plugin.get_plugin_apps()

    def app(environ, start_response):
        return apps[environ["PATH_INFO"]](environ, start_response)

    return app


def _post_json(client, route, body):
    response = client.post(route, data=json.dumps(body), content_type="application/json")
    if response.status_code != 200:
        sys.exit(f"{route} answered {response.status_code}: {response.get_data(as_text=True)}")
    return json.loads(response.get_data(as_text=True))


def _get(client, route, **query):
    response = client.get(route, query_string=query)
    if response.status_code != 200:
        sys.exit(f"{route} {query} answered {response.status_code}: {response.get_data(as_text=True)}")
    return response.get_data()


def _projector(context):
    """The projector's runs, config, tensors, metadata and sprites, through its routes."""
    client = werkzeug_test.Client(_routes(projector_plugin.ProjectorPlugin(context)))
    runs = json.loads(_get(client, "/runs"))
    out = {"runs": runs, "config": {}, "tensors": {}, "metadata": {}, "sprites": {}}
    for run in runs:
        config = json.loads(_get(client, "/info", run=run))
        out["config"] = config
        for embedding in config.get("embeddings", []):
            name = embedding["tensorName"]
            rows, cols = (int(x) for x in embedding["tensorShape"])
            raw = _get(client, "/tensor", run=run, name=name)
            out["tensors"][name] = np.frombuffer(raw, dtype="<f4").reshape(rows, cols).tolist()
            out["metadata"][name] = _get(client, "/metadata", run=run, name=name).decode("utf-8")
            if "sprite" in embedding:
                sprite = Image.open(io.BytesIO(_get(client, "/sprite_image", run=run, name=name)))
                out["sprites"][name] = [sprite.mode, sprite.width, sprite.height,
                                        sprite.tobytes().hex()]
    return out


def numpy_histograms(reference_path):
    with open(reference_path) as f:
        reference = json.load(f)
    out = {}
    for tag, by_step in reference.get("histograms", {}).items():
        out[tag] = {}
        for step, values in by_step.items():
            counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=30)
            out[tag][step] = [counts.tolist(), edges.tolist()]
    return out


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: read_tensorboard.py <logdir> [<reference.json>]")
    logdir = sys.argv[1]
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    run_paths = mux.RunPaths()
    if len(run_paths) != 1:
        sys.exit(f"expected exactly one run in {logdir}, found {sorted(run_paths)}")
    (run_path,) = run_paths.values()
    out, legacy_pngs = classic(run_path)
    run, dashboard_out = dashboards(logdir, legacy_pngs)
    out["run"] = run
    out.update(dashboard_out)
    if len(sys.argv) == 3:
        out["numpy_histograms"] = numpy_histograms(sys.argv[2])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
