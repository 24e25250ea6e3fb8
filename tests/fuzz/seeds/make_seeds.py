#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (run once; the outputs are committed).

Everything here is made up for the purpose except two excerpts of ../shared, named in corpus/README.md:
the first three layers of ml5 Tiny Darknet's model.json (MIT) and the first lines of the bert-base-uncased
vocab.txt / GPT-2 encoder.json + vocab.bpe (Apache-2.0 / MIT). The HDF5, PNG and JPEG seeds come from
make_media_seeds.cpp (libhdf5, libpng, TurboJPEG), which scripts/fuzz-seeds builds and runs.
"""
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared")
SEP = b"\n#%#\n"


def put(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


# ---- safetensors
def safetensors(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


put("safetensors", "f32_metadata.safetensors", safetensors(
    [("conv.weight", "F32", [2, 3], struct.pack("<6f", *range(6))), ("conv.bias", "F32", [2], struct.pack("<2f", 1, -1))],
    {"format": "pt", "producer": "graft"}))
put("safetensors", "mixed_dtypes.safetensors", safetensors(
    [("a", "F64", [1], struct.pack("<d", 2.5)), ("b", "I64", [2], struct.pack("<2q", 7, -7)),
     ("c", "BF16", [2], b"\x80\x3f\x00\x40"), ("d", "F16", [1, 1], b"\x00\x3c"), ("e", "I32", [1], b"\x01\0\0\0"),
     ("f", "I16", [1], b"\x02\0"), ("g", "I8", [2], b"\x01\xff"), ("h", "U8", [3], b"abc"), ("i", "BOOL", [2], b"\x00\x01")]))
put("safetensors", "empty_and_scalar.safetensors", safetensors(
    [("empty", "F32", [0, 4], b""), ("scalar", "F32", [], struct.pack("<f", 3.0))]))
put("safetensors", "no_tensors.safetensors", safetensors([], {}))

# ---- TF.js (model.json, separator, shard bytes)
def dense_model(quantization=None):
    weights = [{"name": "dense/kernel", "shape": [3, 2], "dtype": "float32"},
               {"name": "dense/bias", "shape": [2], "dtype": "float32"}]
    if quantization:
        for w in weights:
            w["quantization"] = dict(quantization)
    return {"format": "layers-model", "generatedBy": "keras v2.4.0", "convertedBy": "TensorFlow.js Converter v4.22.0",
            "modelTopology": {"keras_version": "2.4.0", "backend": "tensorflow", "model_config": {
                "class_name": "Sequential", "config": {"name": "seq", "layers": [
                    {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 3], "dtype": "float32", "name": "in"}},
                    {"class_name": "Dense", "config": {"name": "dense", "units": 2, "activation": "softmax", "use_bias": True}}]}}},
            "weightsManifest": [{"paths": ["group1-shard1of1"], "weights": weights}]}


put("tfjs", "dense_f32", json.dumps(dense_model()).encode() + SEP + struct.pack("<8f", *[0.5 * i for i in range(8)]))
put("tfjs", "dense_uint8", json.dumps(dense_model({"dtype": "uint8", "min": -1.0, "scale": 0.01})).encode() + SEP + bytes(range(8)))
put("tfjs", "dense_uint16", json.dumps(dense_model({"dtype": "uint16", "min": -1.0, "scale": 0.001})).encode() + SEP + bytes(range(16)))
put("tfjs", "dense_float16", json.dumps(dense_model({"dtype": "float16"})).encode() + SEP + b"\x00\x3c" * 8)
graph = {"format": "graph-model", "modelTopology": {"node": [
    {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [{"size": "-1"}, {"size": "3"}]}}}},
    {"name": "w", "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}},
    {"name": "b", "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}},
    {"name": "mm", "op": "MatMul", "input": ["x", "w"], "attr": {"transpose_a": {"b": False}, "transpose_b": {"b": False}}},
    {"name": "add", "op": "BiasAdd", "input": ["mm", "b"]},
    {"name": "out", "op": "Relu", "input": ["add:0"]}]},
    "userDefinedMetadata": {"signature": {"outputs": {"out:0": {"name": "out:0"}}}},
    "weightsManifest": [{"paths": ["group1-shard1of1"], "weights": [
        {"name": "w", "shape": [3, 2], "dtype": "float32"}, {"name": "b", "shape": [2], "dtype": "float32"}]}]}
put("tfjs", "graph_matmul", json.dumps(graph).encode() + SEP + struct.pack("<8f", *range(8)))
darknet = os.path.join(SHARED, "weights", "tiny_darknet_tfjs")
if os.path.isdir(darknet):
    d = json.load(open(os.path.join(darknet, "model.json")))
    layers = d["modelTopology"]["model_config"]["config"]["layers"][:3]
    for layer in layers[1:]:  # initializer/regularizer noise off: the seed stays small
        for k in list(layer["config"]):
            if k.endswith(("_initializer", "_regularizer", "_constraint")):
                del layer["config"][k]
    d["modelTopology"]["model_config"]["config"].update(
        {"layers": layers, "input_layers": [["input_1", 0, 0]], "output_layers": [[layers[-1]["name"], 0, 0]]})
    d["weightsManifest"] = d["weightsManifest"][:1]
    shard = open(os.path.join(darknet, "group1-shard1of1"), "rb").read()
    put("tfjs", "tiny_darknet_head", json.dumps(d).encode() + SEP + shard)

# ---- tokenizers (first byte: 0 tokenizer.json, 1 vocab.txt, 2 vocab.json + merges.txt, 3 tokenizer.json
# + tokenizer_config.json, 4 vocab.txt + tokenizer_config.json; the last part is text)
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "un", "##aff",
         "##able", ",", ".", "!", "a", "b", "c", "é", "日"]
wp = {"version": "1.0", "truncation": None, "padding": None,
      "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                       for i, t in enumerate(vocab[:5])],
      "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": {"type": "TemplateProcessing",
                         "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                         "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                                  {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                         "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": {t: i for i, t in enumerate(vocab)}}}
text = "The cats sat on the mat, unaffable! [MASK] é日 x\u00a0y"
put("tokenizer", "wordpiece_tokenizer_json", b"\x00" + json.dumps(wp).encode() + SEP + text.encode())
put("tokenizer", "vocab_txt", b"\x01" + "\n".join(vocab).encode() + b"\n" + SEP + text.encode())
bpe_vocab = {"<|endoftext|>": 0, "h": 1, "e": 2, "l": 3, "o": 4, "Ġ": 5, "w": 6, "r": 7, "d": 8, "he": 9, "ll": 10,
             "hell": 11, "hello": 12, "Ġw": 13, "or": 14, "Ġwor": 15, "Ġworld": 16, "!": 17, "ld": 18}
merges = "#version: 0.2\nh e\nl l\nhe ll\nhell o\nĠ w\no r\nĠw or\nl d\nĠwor ld\n"
put("tokenizer", "vocab_json_merges", b"\x02" + json.dumps(bpe_vocab).encode() + SEP + merges.encode() + SEP + "hello world!<|endoftext|> héllo".encode())
bpe = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": True}],
       "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                 "fuse_unk": False, "vocab": bpe_vocab, "merges": merges.splitlines()[1:]}}
config = {"do_lower_case": True, "pad_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"}, "model_max_length": 1024}
put("tokenizer", "bpe_tokenizer_json_config", b"\x03" + json.dumps(bpe).encode() + SEP + json.dumps(config).encode() + SEP + b"hello world! 123")
put("tokenizer", "vocab_txt_config", b"\x04" + "\n".join(vocab).encode() + SEP + json.dumps({"do_lower_case": False, "strip_accents": True, "pad_token": "[PAD]"}).encode() + SEP + text.encode())
bert = os.path.join(SHARED, "tokenizers", "bert-base-uncased", "vocab.txt")
if os.path.isfile(bert):
    lines = open(bert, encoding="utf-8").read().split("\n")
    put("tokenizer", "bert_vocab_head", b"\x01" + "\n".join(lines[:120] + lines[1996:2400]).encode() + SEP + text.encode())
gpt2 = os.path.join(SHARED, "tokenizers", "gpt2")
if os.path.isdir(gpt2):
    enc = json.load(open(os.path.join(gpt2, "encoder.json"), encoding="utf-8"))
    small = {k: v for k, v in enc.items() if v < 400}
    bpe_lines = open(os.path.join(gpt2, "vocab.bpe"), encoding="utf-8").read().split("\n")[:60]
    put("tokenizer", "gpt2_head", b"\x02" + json.dumps(small).encode() + SEP + "\n".join(bpe_lines).encode() + SEP + b"The quick brown fox's 2 jumps.")

# ---- graft.json
run = {"format": "graft-run", "format_version": 1, "graft_version": "0.1.0", "libtorch_version": "2.1.2",
       "task": "image-classify", "model": "resnet18", "arch": "resnet18", "head": "dropout(0.2),linear", "freeze": "backbone",
       "classes": ["cat", "dog"], "num_classes": 2,
       "preprocessing": {"size": 224, "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"},
       "data": "data/pets", "training": {"epochs": 3, "lr": 0.001, "batch_size": 32}, "weights": "model.safetensors"}
put("run_json", "graft.json", json.dumps(run, indent=2) + "\n")
run2 = dict(run, head="", classes=["a", "b", "c"], preprocessing={"size": 96, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3})
del run2["freeze"]
put("run_json", "minimal.json", json.dumps(run2))
video = dict(run, task="video-classify", model="mobilenet_v2", temporal="lstm:256", freeze="backbone", weights_save_id="0123456789abcdef",
             preprocessing=dict(run["preprocessing"], frames=8, interpolation="bilinear-align-corners"))
del video["head"], video["arch"], video["num_classes"]
put("run_json", "video.json", json.dumps(video, indent=2) + "\n")
text = {"format": "graft-run", "format_version": 1, "task": "text-classify", "model_type": "bert", "architecture": "BertForSequenceClassification",
        "classes": ["negative", "positive"], "max_length": 64, "block_size": 128, "line_by_line": False,
        "columns": {"format": "csv", "text": "sentence", "text_pair": "", "label": "label", "header": True},
        "freeze": "", "data": "reviews.csv", "weights": "model.safetensors", "config": "config.json",
        "tokenizer": ["vocab.txt", "tokenizer_config.json"], "training": {"epochs": 3}}
put("run_json", "text.json", json.dumps(text, indent=2) + "\n")
lm = dict(text, task="causal-lm", model_type="gpt2", architecture="GPT2LMHeadModel", classes=[], line_by_line=True, columns={"format": "auto", "text": "text"},
          tokenizer=["tokenizer.json"])
put("run_json", "causal_lm.json", json.dumps(lm))
