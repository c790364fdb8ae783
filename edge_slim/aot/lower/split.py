"""Image once, many texts in compiled artifacts: the graph's image part and text part as two more libraries.

The cut is edge_slim.runtime.split's (the nodes that depend on the image only, and the tensors of theirs
the text side reads). Each part is written back as an ONNX graph (runtime/onnx_proto.write_subgraph) with
its cut tensors typed and shaped from one NumPy run of the image part, and compiled by the same phases,
target and recipe as model.so into image.so and text.so. model.so stays: `run`, the C API and the RPC
backend call the whole graph. The compiled bundle's manifest `split` entry names both libraries with their
inputs and outputs, which is all the tvm backend needs (runtime/backends/tvm_backend.py).

Many texts at once: where the text part may run several texts in one call (runtime/split.py, batch_consts,
and the NumPy backend's texts_agree check on a probe image), a third library, texts.so, is the text part
compiled for TEXTS_BATCH texts; `ask` with several questions and `match` call it once per TEXTS_BATCH texts.
int8 text parts get texts.so from runtime.split.quantize_per_text's rewrite (one scale and zero point per
text, as ONNX Runtime's int8 sessions run several texts), checked against text.so by tests/test_split.py.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ...runtime import bundle as B

PART_LIBS = {"image": "image.so", "text": "text.so", "texts": "texts.so"}
TEXTS_BATCH = 8     # texts.so runs this many texts at once (the runtime pads the last group by repetition)


def _spec(name: str, a: np.ndarray) -> dict:
    return {"name": name, "shape": list(a.shape), "dtype": str(a.dtype)}


def part_jobs(job) -> list | None:
    """The compiles of the two parts of a SlimPajama bundle's graph (None: an own model, or no cut)."""
    from ...runtime.backends.numpy_backend import NumpyBackend
    from ...runtime.onnx_proto import dtype_code, load_model, tensor_value_info, write_subgraph
    from ...runtime.split import batch_consts, plan_split
    from .pipeline import Job, own_model
    if own_model(job) or job.binds or job.dynamic:
        return None
    model = load_model(job.onnx_path)
    sp = plan_split(model.graph)
    if sp is None:
        return None
    m = job.bundle.manifest
    inputs = {i["name"]: i for i in m["inputs"]}
    image = np.zeros(inputs["image"]["shape"], np.float32)
    probe = NumpyBackend(job.bundle)
    state = probe.encode({"image": image})     # also runs texts_agree where batch_consts allows texts at once
    cut = [tensor_value_info(c, dtype_code(state[c].dtype), state[c].shape) for c in sp.cut]
    folder = Path(tempfile.mkdtemp(prefix="edge-slim-split-"))
    graphs = {"image": write_subgraph(model, list(sp.image_nodes), ["image"], cut + list(sp.image_outputs), "image"),
              "text": write_subgraph(model, list(sp.text_nodes), cut + ["tokens"], list(sp.text_outputs), "text")}
    specs = {"image": ([inputs["image"]], [_spec(n, state[n]) for n in sp.cut + sp.image_outputs]),
             "text": ([_spec(c, state[c]) for c in sp.cut] + [inputs["tokens"]],
                      [o for o in m["outputs"] if o["name"] in sp.text_outputs])}
    rewrite = None if probe.texts_at_once else _per_text_rewrite(probe, model.graph, sp, state, inputs["tokens"])
    over = batch_consts(model.graph, sp, rewrite=rewrite) if probe.texts_at_once or rewrite else None
    if over is not None:
        tok = inputs["tokens"]
        many = {**tok, "shape": [TEXTS_BATCH, *tok["shape"][1:]]}
        graphs["texts"] = write_subgraph(model, list(rewrite.nodes if rewrite else sp.text_nodes),
                                         cut + [tensor_value_info("tokens", dtype_code(np.dtype(tok["dtype"])), many["shape"])],
                                         [tensor_value_info(o) for o in sp.text_outputs], "texts",
                                         replace={**(rewrite.initializers if rewrite else {}), **over})
        specs["texts"] = ([_spec(c, state[c]) for c in sp.cut] + [many],
                          [{**o, "shape": [TEXTS_BATCH, *o["shape"][1:]]} for o in specs["text"][1]])
    jobs = []
    for part, data in graphs.items():
        (folder / f"{part}.onnx").write_bytes(data)
        ins, outs = specs[part]
        view = B.Bundle(folder, {**m, "model_file": f"{part}.onnx", "inputs": ins, "outputs": outs,
                                 "describe": None})
        jobs.append(Job(source=None, target=job.target, recipe=job.recipe, bundle=view, lib_name=PART_LIBS[part],
                        precision=job.precision, tune_trials=job.tune_trials, cuda_arch=job.cuda_arch,
                        tuning_dir=job.tuning_dir,
                        debug_dump=job.debug_dump / part if job.debug_dump is not None else None))
    return jobs


def _per_text_rewrite(probe, g, sp, state: dict, tokens: dict):
    """runtime.split.quantize_per_text of an int8 text part (DynamicQuantizeLinear per text), its ranks from
    one NumPy run of the text part on the probe image; None where there is nothing to rewrite or it does not
    apply. texts.so is then compiled from the rewrite, whose matmuls keep the integer kernels (no zero point
    for A: int8_kernels takes 0)."""
    from ...runtime.split import dynamic_quantize_inputs, quantize_per_text
    xs = list(dict.fromkeys(dynamic_quantize_inputs(g, sp)))
    if not xs:
        return None
    values = probe._text_values(probe._consts, state, {"tokens": np.zeros(tokens["shape"], np.dtype(tokens["dtype"]))},
                                xs)
    return quantize_per_text(g, sp, {x: np.ndim(values[x]) for x in xs})


def manifest_entry(jobs: list) -> dict:
    """The compiled bundle's `split` entry: per part its library, inputs, outputs and compile record."""
    out = {}
    for part, j in zip(PART_LIBS, jobs):
        m = j.bundle.manifest
        out[part] = {"graph": PART_LIBS[part], "inputs": m["inputs"], "outputs": m["outputs"],
                     "source_sha256": B.sha256_file(j.onnx_path), "compile": {"phases": j.phases}}
        if part == "texts":
            out[part]["batch"] = TEXTS_BATCH
    return out
