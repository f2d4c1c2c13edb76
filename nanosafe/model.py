"""Models: a tiny Qwen2 / Qwen2.5-VL built from scratch, or any Hugging Face checkpoint.

The tiny path (model.init == ""): a byte-level BPE tokenizer is trained in about a second on the
world's text, digits split one per token as Qwen's tokenizer does, with Qwen's chat special
tokens and a Qwen-style chat template; then a randomly initialised Qwen2.5-VL (or text-only
Qwen2) of ~1-2M parameters is built from its config. Images of 56x56 pixels become 16 patches of
14x14 and, after the 2x2 spatial merge, 4 image tokens.

The checkpoint path loads any local dir or hub id with `trust_remote_code` off unless the config
asks; a vision-language checkpoint comes with its image processor. No processor class is
needed: prompts are rendered with the tokenizer's chat template and each `<|image_pad|>` is
expanded to the number of merged patches (nanosafe.data), which is what Qwen's processor does.
That is on purpose: in transformers 5 `Qwen2_5_VLProcessor` (hence `AutoProcessor`) cannot be
built without its video processor, which needs torchvision, and a torchvision wheel must match
the torch build exactly (PyPI's does not import beside a CPU or custom torch). So nanosafe, and
the exports it writes, need only `AutoTokenizer` + `AutoImageProcessor` (pillow); AutoProcessor
works on an export wherever a matching torchvision is installed.

Training runs keep fp32 parameters (`make` refuses bf16 / fp16 ones: AdamW on them rounds most
small updates away, and FSDP's bf16 compute keeps fp32 master shards anyway); `export` writes
the checkpoint's own dtype back (bf16 for Qwen's releases) unless model.export_dtype says
otherwise. `model.attn_implementation` picks the attention kernel (sdpa by default: on the
language model, nanosafe/attention.py's, which is sdpa outside the update's shared-prompt rows).

`Bundle` carries (model, tokenizer, image_processor) so every script passes one thing around,
and `export` writes all three with `save_pretrained` (safetensors) for any Hugging Face tool.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace

import torch

from nanosafe import attention, dist

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>", "<think>", "</think>", "<search>", "</search>",
           "<result>", "</result>", "<confidence>", "</confidence>"]

# Qwen's layout: images inside the user turn as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")

@dataclass
class Bundle:
    model: torch.nn.Module
    tokenizer: object
    image_processor: object | None = None
    export_dtype: torch.dtype = torch.float32  # the checkpoint's own, or model.export_dtype (`make`)

    @property
    def is_vl(self) -> bool:
        return self.image_processor is not None

def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", additional_special_tokens=SPECIAL[1:])
    hf.chat_template = CHAT_TEMPLATE
    return hf

def _tiny_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    side = 56  # 4x4 patches of 14 -> 2x2 merged tokens
    return Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=14,
                                    merge_size=2, temporal_patch_size=2)

def build_tiny(mcfg, tokenizer) -> Bundle:
    """A randomly initialised model whose sizes come from ModelConfig."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Config,
                              Qwen2ForCausalLM)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    head_dim = mcfg.hidden_size // mcfg.num_heads
    text = dict(vocab_size=len(tokenizer), hidden_size=mcfg.hidden_size,
                intermediate_size=mcfg.intermediate_size, num_hidden_layers=mcfg.num_layers,
                num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
                max_position_embeddings=1024, tie_word_embeddings=True,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                bos_token_id=None)
    if not mcfg.vision:
        model = Qwen2ForCausalLM(Qwen2Config(**text, rope_parameters={"rope_type": "default",
                                                                      "rope_theta": 10000.0}))
        image_processor = None
    else:
        half = head_dim // 2  # M-RoPE splits the rotary half-dim into (time, height, width)
        mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=mcfg.vision_depth, hidden_size=mcfg.vision_hidden,
                               intermediate_size=2 * mcfg.vision_hidden, num_heads=2,
                               out_hidden_size=mcfg.hidden_size, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[mcfg.vision_depth - 1]),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=True)
        model = Qwen2_5_VLForConditionalGeneration(config)
        image_processor = _tiny_image_processor()
    model.set_attn_implementation(attn_implementation(mcfg))
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    return Bundle(model, tokenizer, image_processor)

def attn_implementation(mcfg) -> str:
    """model.attn_implementation, checked: flash_attention_2 needs the flash-attn package."""
    import importlib.util
    impl = mcfg.attn_implementation
    if impl not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation={impl!r}: one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if impl == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                         "(pip install flash-attn, CUDA only); sdpa needs nothing")
    return impl

def dtype_of(name: str, key: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{key}={name!r}: not a floating-point torch dtype (float32, bfloat16, float16)")
    return dtype

def load(path: str, mcfg) -> Bundle:
    """Any Hugging Face checkpoint (local dir or hub id), text or vision-language."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    trc = mcfg.trust_remote_code
    config = AutoConfig.from_pretrained(path, trust_remote_code=trc)
    is_vl = hasattr(config, "vision_config")
    cls = AutoModelForImageTextToText if is_vl else AutoModelForCausalLM
    kw = dict(trust_remote_code=trc, dtype=dtype_of(mcfg.dtype, "model.dtype"),
              attn_implementation=attn_implementation(mcfg))
    if dist.world_size() > 1 and not dist.is_main():  # a skeleton; rank 0's weights arrive in dist.shard
        from transformers import GenerationConfig
        with torch.device("meta"):
            model = cls.from_config(config, **kw)
        with contextlib.suppress(OSError):  # as from_pretrained does: the checkpoint's own settings
            model.generation_config = GenerationConfig.from_pretrained(path)
    else:
        model = cls.from_pretrained(path, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    image_processor = None
    if is_vl:
        from transformers import AutoImageProcessor
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trc)
    source = config.dtype if isinstance(config.dtype, torch.dtype) else torch.float32  # config.json's dtype
    return Bundle(model, tokenizer, image_processor, source)

def freeze_vision(model: torch.nn.Module) -> int:
    """Freeze the vision tower (DESIGN §7); returns the number of frozen parameters."""
    n = 0
    for name, p in model.named_parameters():
        if ".visual." in f".{name}" or name.startswith("visual."):
            p.requires_grad_(False)
            n += p.numel()
    return n

def set_pixels(processor, dcfg) -> None:
    """data.min_pixels / data.max_pixels (0 keeps the processor's own) as the Qwen2-VL processor's
    bounds on an image's pixel count (a 6000x6000 photo under Qwen's own 12.8M is ~16k tokens)."""
    size = replace(processor.size, shortest_edge=dcfg.min_pixels or processor.size.shortest_edge,
                   longest_edge=dcfg.max_pixels or processor.size.longest_edge)
    if size.shortest_edge > size.longest_edge:
        raise ValueError(f"data.min_pixels / data.max_pixels: the image bounds are {size.shortest_edge} > "
                         f"{size.longest_edge} pixels (0 keeps the processor's own)")
    processor.size = size

def make(cfg, texts_fn=None) -> Bundle:
    """The policy for a run: cfg.init (or model.init) if set, else a tiny model from scratch with a
    tokenizer trained on texts_fn()."""
    init = cfg.init or cfg.model.init
    if init:
        bundle = load(init, cfg.model)
    else:
        torch.manual_seed(cfg.seed)
        bundle = build_tiny(cfg.model, train_tokenizer(texts_fn(), cfg.model.vocab_size))
    # a randomly initialised vision tower carries no visual knowledge to protect: it trains in SFT
    if cfg.model.freeze_vision and bundle.is_vl and init:
        freeze_vision(bundle.model)
    if bundle.is_vl:
        set_pixels(bundle.image_processor, cfg.data)
    low = sorted({str(p.dtype) for p in bundle.model.parameters() if p.requires_grad and torch.finfo(p.dtype).bits < 32})
    if low:  # AdamW on bf16 weights rounds most small updates away (at lr 1e-6, nearly all of them)
        raise ValueError(f"model.dtype={cfg.model.dtype}: training {', '.join(low)} parameters keeps no fp32 master "
                         "weights, and most updates round away. Use model.dtype=float32: under torchrun on GPUs "
                         "FSDP still computes in bf16 (dist.mixed_precision=bf16) with the fp32 shards as master "
                         "weights.")
    attention.use(bundle.model)  # sdpa, with the update's prompt-shared rows computed block by block
    if cfg.model.export_dtype:
        bundle.export_dtype = dtype_of(cfg.model.export_dtype, "model.export_dtype")
    if cfg.model.gradient_checkpointing:
        bundle.model.activation_checkpointing_enable()  # non-reentrant, per decoder / vision block
        # Hugging Face also hooks every input embedding (the vision tower's patch embedding too)
        # to make its output require grad, which only reentrant checkpointing and adapters need.
        # With a frozen tower that turns its activations into a graph that backward walks for
        # nothing, and that reaches the model's output (`image_outputs`) on ranks with images only.
        bundle.model.disable_input_require_grads()
    return bundle

def export(bundle: Bundle, out: str) -> None:
    """save_pretrained for weights (safetensors), tokenizer + chat template and image processor.
    The weights are written in `bundle.export_dtype`: the checkpoint's own dtype (bf16 for Qwen's
    releases; fp32 for the tiny model) unless model.export_dtype names another. Under FSDP every
    rank joins the gather of the full weights and rank 0 writes them."""
    model = dist.full_copy(bundle.model)
    if not dist.is_main():
        return
    os.makedirs(out, exist_ok=True)
    dtype = bundle.export_dtype
    # a cast copy of the weights, not of the model: the policy itself stays fp32 (it may train on)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    _set_config_dtype(os.path.join(out, "config.json"), str(dtype).removeprefix("torch."))
    bundle.tokenizer.save_pretrained(out)
    if bundle.image_processor is not None:
        bundle.image_processor.save_pretrained(out)

def _set_config_dtype(path: str, name: str) -> None:
    """save_pretrained names the dtype of the module's parameters (fp32 while training) in
    config.json; the file must name the dtype of the weights it was written beside, which is what
    `from_pretrained` loads them as by default."""
    with open(path) as f:
        conf = json.load(f)
    for c in [conf] + [v for v in conf.values() if isinstance(v, dict) and "dtype" in v]:
        c["dtype"] = name
    with open(path, "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
        f.write("\n")

def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
