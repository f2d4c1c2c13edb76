"""Stand-ins for the real Qwen2.5 checkpoints, built offline in about a second.

`write(out_dir, hub_id)` writes a Hugging Face model dir shaped like the hub model `hub_id`
(its config.json as published, from nanosafe.memory.HUB_CONFIGS, in the file's own layout),
with only the sizes shrunk: 2 decoder layers of width 64, a 2-block vision tower of width 32,
a vocabulary of a few hundred byte-level BPE tokens trained here with Qwen2.5's special tokens,
the real chat template (tests/fixtures/chat_templates), the real image-processor settings, bf16
safetensors weights and a generation_config.json, as on the hub. What stays real is what the
scripts meet: the model classes, the config layout, the template, the tokenizer's special tokens
(`<think>` and friends are plain text for Qwen's tokenizer, as here) and the weights' dtype.
"""
from __future__ import annotations

import copy
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "fixtures", "chat_templates")

# Qwen2.5's added tokens, in the order of its tokenizer.json (ids 151643...)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"]
# the sizes a test can afford; every other field stays the published one
SHRINK = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
SHRINK_TOWER = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "fullatt_block_indexes": [1]}
CORPUS = ["Think step by step inside <think> </think>, then give the final answer.",
          "What is 12 + 7? <think>2 + 7 = 9, 1 + 0 = 1</think> \\boxed{19}",
          "I cannot help with that. It could hurt someone. <search>capital of France</search>",
          "<result>Paris is the capital.</result> <confidence>0.9</confidence> The picture shows a kitchen.",
          "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."] * 4


def tokenizer(vocab_size: int = 400, template: str = "qwen2_5_instruct.jinja"):
    """Byte-level BPE with Qwen's pre-tokenisation (one digit per token) and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=QWEN_SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # as Qwen2.5-*-Instruct: eos is the end of turn, pad is <|endoftext|>, no bos
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=QWEN_SPECIAL[1:])
    with open(os.path.join(TEMPLATES, template)) as f:
        hf.chat_template = f.read()
    return hf


def write(out_dir: str, hub_id: str, seed: int = 0, **sizes) -> str:
    """The shrunk stand-in of `hub_id` in `out_dir` (see the module docstring); `sizes` override
    SHRINK (e.g. num_hidden_layers=1). Returns out_dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

    from nanosafe.memory import HUB_CONFIGS
    published = HUB_CONFIGS[hub_id]
    is_vl = "vision_config" in published
    tok = tokenizer(template="qwen2_5_vl_instruct.jinja" if is_vl else "qwen2_5_instruct.jinja")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    cfg = copy.deepcopy(published)
    cfg.update(SHRINK, **sizes)
    ratio = published["num_attention_heads"] // published["num_key_value_heads"]  # keep the GQA groups
    cfg["num_key_value_heads"] = max(1, cfg["num_attention_heads"] // ratio)
    cfg.update(vocab_size=len(tok), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
               max_position_embeddings=2048)
    if is_vl:
        half = cfg["hidden_size"] // cfg["num_attention_heads"] // 2  # M-RoPE: (time, height, width) of the rotary half
        sec = published["rope_scaling"]["mrope_section"]
        mrope = [half * s // sum(sec) for s in sec]
        mrope[0] += half - sum(mrope)
        cfg["rope_scaling"] = {"type": "mrope", "mrope_section": mrope}
        cfg["vision_config"] = {**cfg["vision_config"], **SHRINK_TOWER, "out_hidden_size": cfg["hidden_size"]}
        cfg.update({k: ids[t] for k, t in [("vision_start_token_id", "<|vision_start|>"),
                                           ("vision_end_token_id", "<|vision_end|>"),
                                           ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>")]})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(out_dir)
    cls = AutoModelForImageTextToText if is_vl else AutoModelForCausalLM
    model = cls.from_config(config).to(torch.bfloat16)  # the hub's weights are bf16
    model.save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:  # the published layout, not the re-saved one
        json.dump(cfg, f, indent=2)
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                     eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=True, temperature=0.7,
                     top_p=0.8, top_k=20, repetition_penalty=1.05).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    if is_vl:
        with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
            json.dump({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                       "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                       "image_std": [0.26862954, 0.26130258, 0.27577711],
                       "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}, f)
        with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
            json.dump({"chat_template": tok.chat_template}, f)
    return out_dir
