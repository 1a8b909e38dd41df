"""Tiny captioning models built in-process (nothing downloaded): a WD14-like ONNX tagger and a random BLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (name, category) in selected_tags.csv order: 9 rating, 0 general, 4 character
TAGS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
        ("long_hair", 0), ("smile", 0), ("^_^", 0), ("hat_(object)", 0), ("solo", 0),
        ("hatsune_miku_(vocaloid)", 4), ("outdoors", 0)]

# logit = [B, G, R] channel means (0..1, the model sees BGR) @ LOGITS + BIAS
LOGITS = np.array([
    # gen  sens  ques  expl  long  smile ^_^   hat   solo  miku  outd
    [2.0, -1.0, -2.0, -3.0, -2.0, 0.5, -3.0, 2.0, 3.0, 1.0, 1.5],  # B
    [1.0, 0.5, -1.0, -2.0, 1.0, -1.5, 2.5, -1.5, -2.0, -3.0, -1.0],  # G
    [-1.0, 1.5, -1.0, -3.0, 3.0, 1.2, 0.8, 0.5, -2.5, 3.5, -2.0],  # R
])
BIAS = np.array([-0.5, 0.0, -1.0, -2.0, -1.0, -0.4, -0.5, -0.6, -0.7, -1.0, -1.1])


def tiny_wd14_probabilities(bgr_means: np.ndarray) -> np.ndarray:
    """What the tiny tagger gives for images whose input has these [B, G, R] channel means (0..255)."""
    logits = np.asarray(bgr_means, dtype=np.float64) / 255.0 @ LOGITS + BIAS
    return 1.0 / (1.0 + np.exp(-logits))


def build_tiny_wd14(folder: Path, size: int = 16, batch: int | str = "N") -> Path:
    """``model.onnx`` (input ``input_1`` [N, size, size, 3] -> mean over H, W -> linear -> sigmoid) and
    ``selected_tags.csv`` in ``folder``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array((LOGITS / 255.0).astype(np.float32), "weight")
    bias = numpy_helper.from_array(BIAS.astype(np.float32), "bias")
    nodes = [helper.make_node("ReduceMean", ["input_1"], ["means"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["means", "weight"], ["logits"]),
             helper.make_node("Add", ["logits", "bias"], ["biased"]),
             helper.make_node("Sigmoid", ["biased"], ["predictions_sigmoid"])]
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(TAGS)])],
        [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{1000 + i},{name},{cat},{500 - i}" for i, (name, cat) in
                                             enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "blue", "cat", "dog", "on",
              "the", "table", "square"]


def build_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A random BLIP captioner (hidden size 32, one layer, 32x32 images) saved with its processor in ``folder``.
    The special tokens other than [SEP] (the end) are never generated, so every caption is made of words."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(BLIP_WORDS) + "\n", encoding="utf-8")
    vocab = {word: i for i, word in enumerate(vocab_file.read_text(encoding="utf-8").split())}
    tokenizer = BertTokenizer(vocab=vocab)
    ids = {name: vocab[name] for name in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    config = BlipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "encoder_hidden_size": 32,
                     "bos_token_id": ids["[CLS]"], "pad_token_id": ids["[PAD]"], "sep_token_id": ids["[SEP]"],
                     "eos_token_id": ids["[SEP]"]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        bias = model.text_decoder.cls.predictions.decoder.bias
        for name in ("[PAD]", "[UNK]", "[CLS]", "[MASK]"):
            bias[ids[name]] = -30.0
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
