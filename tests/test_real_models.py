"""The presets on real architectures: Qwen2.5 and Qwen2.5-VL checkpoints, as a user runs them.

Each model is a shrunk stand-in of a published checkpoint (tests/real_checkpoints.py: the real
config.json layout and model class, the real chat template, Qwen's special tokens, bf16 weights),
and each training run goes through the scripts in a fresh process with a preset (`--config
configs/qwen2_5_*.py`) and overrides for size only (init, data, steps, batch and lengths):

- text, Qwen2.5-0.5B-Instruct (configs/qwen2_5_0_5b.py): SFT -> RL -> eval (eval.py's main) -> the export loads with
  plain `AutoModelForCausalLM` + `AutoTokenizer`, keeps bf16, and generates from the real template.
- VL, Qwen2.5-VL-7B-Instruct (configs/qwen2_5_vl_7b.py): the same with image and text prompts; the
  export loads with `Qwen2_5_VLForConditionalGeneration` + `AutoTokenizer` + `AutoImageProcessor`.
- FSDP on two CPU ranks (gloo) with gradient checkpointing (the presets turn it on) and one rank
  holding the image prompt while the other holds the text prompt, both ways round (the same seed
  over the data file in both orders swaps the ranks' shares at every step): SFT with a trainable
  vision tower (configs/qwen2_5_vl_3b.py), RL with layer-by-layer rollouts and host offload
  (configs/qwen2_5_vl_72b.py). This hung before (nanosafe.dist, "mixed image/text batches"); a
  `timeout` turns a regression into a failure instead of a stuck CI job.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

import eval as evaluation  # the script's main, in this process (it starts no process group)
import real_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# sizes only: the presets' other settings (RL algorithm, checkpointing, offload, rollout mode) stay;
# min_pixels=0 is the processor's own floor (4 image tokens for the test image, not the presets' 256)
SMALL = ["optim.steps=2", "optim.batch_size=2", "optim.micro_batch_size=1", "rollout.prompts_per_step=2",
         "rollout.group_size=2", "rollout.gen_batch_size=4", "rollout.max_new_tokens=6", "data.max_prompt_len=96",
         "data.max_len=160", "data.min_pixels=0", "io.progress=false", "io.eval_samples=1", "world.n_sft=8",
         "world.n_rl=8",
         "world.n_heldout_per_family=1"]


def run(*args, nproc=0, timeout=240):
    """A script as a user runs it: plain python (nproc 0) or torchrun with gloo."""
    prefix = [sys.executable] if nproc == 0 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.Popen(prefix + list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers (a SIGKILL would orphan them)
        p.communicate(timeout=30)
        pytest.fail(f"timed out after {timeout}s (a hang): {' '.join(args)}")
    assert p.returncode == 0, out[-2000:] + err[-5000:]
    return out


def lines(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    Image.new("RGB", (56, 56), (200, 40, 40)).save(d / "red.png")  # 4x4 patches -> 4 image tokens
    add = [{"id": f"add{i}", "prompt": f"What is {i} + 3?", "label": "general_rule", "answer": str(i + 3),
            "response": f"<think>{i} + 3 = {i + 3}</think> \\boxed{{{i + 3}}}"} for i in range(2)]
    img = {"id": "img", "prompt": "Is what this picture shows safe to do?", "images": ["red.png"], "label": "safety",
           "meta": {"harmful": True}, "response": "<think>It is not.</think> I cannot help with that."}
    return {"dir": d, "text": lines(d / "text.jsonl", add),
            "mixed": lines(d / "mixed.jsonl", [img, add[0]]), "mixed_swapped": lines(d / "swapped.jsonl", [add[0], img]),
            **{key: real_checkpoints.write(str(d / key), f"Qwen/Qwen2.5-{name}-Instruct")
               for key, name in [("qwen2_5_0_5b", "0.5B"), ("qwen2_5_vl_3b", "VL-3B"), ("qwen2_5_vl_7b", "VL-7B"),
                                 ("qwen2_5_vl_72b", "VL-72B")]}}


def train(script, preset, init, data, out, *args, nproc=0):
    """A preset's 2 steps on `init` through `script` (stage m3b for RL), sizes overridden only."""
    run(script, "--config", f"configs/{preset}.py", *SMALL, f"data.train={data}", f"data.heldout={data}",
        f"init={init}", f"out_dir={out}", *args, *(["stage=m3b"] if script == "train_grpo.py" else []), nproc=nproc)
    rows = [json.loads(x) for x in open(f"{out}/metrics.jsonl")]
    assert [r["step"] for r in rows][-1] == 2 and all(torch.isfinite(torch.tensor(r["grad_norm"])) for r in rows)
    return f"{out}/model"


def ladder(files, preset, data, out):
    """SFT then RL from its export; returns the RL export dir."""
    sft = train("train_sft.py", preset, files[preset], data, f"{out}/sft")
    return train("train_grpo.py", preset, sft, data, f"{out}/m3b")


def exported_dtypes(model_dir):
    from safetensors import safe_open
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_text_checkpoint_end_to_end(files, monkeypatch):
    monkeypatch.chdir(ROOT)  # eval.main reads configs/ relative to the working dir, as the script does
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d = files["dir"]
    model_dir = ladder(files, "qwen2_5_0_5b", files["text"], d / "text")
    res = evaluation.main(["--model", model_dir, "--data", files["text"], "rollout.max_new_tokens=6", "io.eval_samples=1"])
    assert res["summary"]["format"] is not None and os.path.exists(os.path.join(model_dir, "eval_tiny.json"))
    assert exported_dtypes(model_dir) == {"BF16"}  # the source checkpoint's dtype, though trained in fp32
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.dtype == torch.bfloat16
    text = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=4, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 4


def test_vl_checkpoint_end_to_end(files, monkeypatch):
    monkeypatch.chdir(ROOT)  # eval.main reads configs/ relative to the working dir, as the script does
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from nanosafe import config, data, model
    d = files["dir"]
    model_dir = ladder(files, "qwen2_5_vl_7b", files["mixed"], d / "vl")
    res = evaluation.main(["--model", model_dir, "--data", files["mixed"], "rollout.max_new_tokens=6", "io.eval_samples=1"])
    assert set(res["families"]) >= {"safety", "general_rule"}
    assert exported_dtypes(model_dir) == {"BF16"}
    assert not os.path.exists(os.path.join(model_dir, "video_preprocessor_config.json"))
    # what a user loads without nanosafe: model, tokenizer (+ chat template), image processor
    vl = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    tok, proc = AutoTokenizer.from_pretrained(model_dir), AutoImageProcessor.from_pretrained(model_dir)
    sample = data.read_jsonl(files["mixed"])[0]
    bundle = model.Bundle(vl, tok, proc)
    enc = data.encode_prompt(bundle, sample, config.DataConfig(system_prompt=""))
    assert int(enc["mm_token_type_ids"].sum()) == 4  # 56 x 56 px -> 16 patches -> 4 merged tokens
    batch = data.collate([enc], tok.pad_token_id, left=True)
    new = vl.generate(**batch, max_new_tokens=4, do_sample=False)[0, batch["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 4


def test_vl_auto_processor(files):
    """AutoProcessor needs torchvision in transformers 5 (the processor's video half); where it is
    installed the export loads through it too."""
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor
    proc = AutoProcessor.from_pretrained(files["qwen2_5_vl_7b"])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    enc = proc(text=[text], images=[Image.open(files["dir"] / "red.png")], return_tensors="pt")
    assert int((enc["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 4


def test_real_templates_render_text_as_string_and_images_as_parts(files):
    """The Qwen2.5 text template concatenates a turn's content as a string: a text prompt must
    reach it as one (a list of parts was a TypeError there); the VL template takes both forms."""
    from nanosafe import config, data, model
    text_tok = real_checkpoints.tokenizer(template="qwen2_5_instruct.jinja")
    vl_tok = real_checkpoints.tokenizer(template="qwen2_5_vl_instruct.jinja")
    plain = {"prompt": "What is 1 + 3?", "images": []}
    with_image = {"prompt": "What is this?", "images": ["x.png"]}
    for tok in (text_tok, vl_tok):
        out = data.render_prompt(tok, plain, "Be brief.")
        assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1 + 3?<|im_end|>\n"
                       "<|im_start|>assistant\n")
    out = data.render_prompt(vl_tok, with_image, "")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>" in out
    # an image prompt for a text model: the data error names the line, not a template TypeError
    sample = data.read_jsonl(files["mixed"])[0]
    with pytest.raises(data.DataError, match=r"mixed.jsonl:1: field 'images': this model takes no images"):
        data.encode_prompt(model.Bundle(None, text_tok), sample, config.DataConfig())


def test_dtypes_and_attention_are_checked(files):
    from nanosafe import attention, config, model
    cfg = config.parse([f"init={files['qwen2_5_0_5b']}", "model.dtype=bfloat16"])
    with pytest.raises(ValueError, match=r"model.dtype=bfloat16: training torch.bfloat16 parameters keeps no "
                                         r"fp32 master weights.*Use model.dtype=float32"):
        model.make(cfg)
    with pytest.raises(ValueError, match="config key 'model.dtype': 'int8' is not one of float32, bfloat16, float16"):
        config.parse([f"init={files['qwen2_5_0_5b']}", "model.dtype=int8"])  # caught when parsed
    for key, value, msg in [("model.export_dtype", "half_precision", "not a floating-point torch dtype"),
                            ("model.attn_implementation", "fast", "one of sdpa, eager, flash_attention_2")]:
        with pytest.raises(ValueError, match=f"{key}={value!r}: {msg}".replace("(", r"\(")):
            model.make(config.parse([f"init={files['qwen2_5_0_5b']}", f"{key}={value}"]))
    for impl in ("eager", "sdpa"):
        b = model.make(config.parse([f"init={files['qwen2_5_0_5b']}", f"model.attn_implementation={impl}",
                                     "model.export_dtype=float16"]))
        # sdpa on the language model is nanosafe/attention.py's stand-in (sdpa outside the update)
        want = attention.NAME if impl == "sdpa" else impl
        assert b.model.config._attn_implementation == want and b.export_dtype == torch.float16
        assert b.model.dtype == torch.float32


@pytest.mark.parametrize("images_on_rank", [0, 1])
def test_fsdp_checkpointing_mixed_batches(files, tmp_path, images_on_rank):
    """Two ranks, gradient checkpointing on (as the presets ship), the image prompt on one rank
    and the text prompt on the other at every step (the file's order decides which): SFT with a
    trainable tower (3B preset), and RL with a frozen one, host offload and layer-by-layer
    rollouts (72B preset), each to the end without a hang."""
    data = files["mixed"] if images_on_rank == 0 else files["mixed_swapped"]
    train("train_sft.py", "qwen2_5_vl_3b", files["qwen2_5_vl_3b"], data, tmp_path / "sft", "model.freeze_vision=false",
          nproc=2)
    train("train_grpo.py", "qwen2_5_vl_72b", files["qwen2_5_vl_72b"], data, tmp_path / "m3b", nproc=2)


def test_memory_planner(files, capsys, monkeypatch):
    """Any config, a local model dir or a preset's hub id, any GPU count and size; --help."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from nanosafe import config, memory
    monkeypatch.chdir(ROOT)
    out = memory.main(["--config", "configs/qwen2_5_vl_7b.py", "--gpus", "4", "--gpu-mem", "48"]).splitlines()
    row = [c.strip() for c in out[2].split("|")[1:-1]]
    assert len(out) == 3 and row[:3] == ["qwen2_5_vl_7b", "8.29", "4"] and row[-2] == "no"  # 58.4 + 5 > 48
    assert memory.main(["--config", "configs/qwen2_5_vl_7b.py", "--gpus", "4"]).splitlines()[2].split("|")[-3].strip() == "yes"
    # a local dir: its own config.json (the published layout), counted to the parameter
    for key, cls in (("qwen2_5_0_5b", AutoModelForCausalLM), ("qwen2_5_vl_3b", AutoModelForImageTextToText),
                     ("qwen2_5_vl_72b", AutoModelForImageTextToText)):
        cfg = config.parse(["--config", "configs/qwen2_5_vl_7b.py", f"init={files[key]}"])
        assert memory.shape_of(cfg).total() == sum(p.numel() for p in cls.from_pretrained(files[key]).parameters())
    table = memory.main(["configs/qwen2_5_0_5b.py", f"init={files['qwen2_5_0_5b']}", "--gpus", "1", "2"])
    assert len(table.splitlines()) == 4
    with pytest.raises(SystemExit) as e:
        memory.main(["--help"])
    assert e.value.code == 0 and "--gpu-mem" in capsys.readouterr().out
    with pytest.raises(KeyError, match="not a local dir with a config.json, and not one of the hub ids"):
        memory.main(["--config", "configs/qwen2_5_vl_7b.py", "init=Qwen/Qwen2.5-VL-32B-Instruct"])
    with pytest.raises(SystemExit):
        memory.main(["--config", "configs/qwen2_5_vl_7b.py", "--gpus", "0"])
