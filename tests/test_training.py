"""Training on the tiny model, CPU: exact label masks, packing without cross-attention, a loss that falls, LoRA
save/reload/merge, progressive stages, a reward model that separates a separable set, and the student's answers in
the files the evaluation stages read. Everything runs through trl's real trainers and collators."""
import json, math
from pathlib import Path

import pytest
import torch

from selfinstruct_nb import data, sft, reward
from selfinstruct_nb.core import RecordError, read_jsonl, write_jsonl
from selfinstruct_nb.tinymodel import load_model

torch.set_num_threads(1)  # a 140K-parameter model gains nothing from threads; CI machines are shared
NB = dict(device="cpu", disable_tqdm=True)


def _cfg(tmp_path, name="run", **kw):
    return sft.sft_config(tmp_path/name, **{"max_length": 128, "logging_steps": 1, **NB, **kw})


def _tokens(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


CHAT = {"messages": [{"role": "system", "content": "You are a careful assistant. Think step by step."},
                     {"role": "user", "content": "What is 12 plus 30?"},
                     {"role": "assistant", "content": "12 plus 30 is 42."}]}
ALPACA = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}


# --- labels -------------------------------------------------------------------------------------------------------
def test_labels_chat_prompt_masked_answer_and_end_token_kept(tmp_path):
    model, tok = sft.load_student("tiny", device="cpu")
    rec = sft.sft_record(CHAT)
    tr = sft.make_sft_trainer(model, tok, sft.sft_dataset([rec], "chat"), _cfg(tmp_path, packing=False))
    row = tr.train_dataset[0]
    # expected, built by hand from the template's pieces: "<s><|system|>\n...\n<|user|>\n...\n<|assistant|>\n" + answer + "</s>"
    prompt = "<s><|system|>\nYou are a careful assistant. Think step by step.\n<|user|>\nWhat is 12 plus 30?\n<|assistant|>\n"
    prompt_ids, answer_ids = _tokens(tok, prompt), _tokens(tok, "12 plus 30 is 42.") + [tok.eos_token_id]
    assert row["input_ids"] == prompt_ids + answer_ids
    assert row["labels"] == [-100] * len(prompt_ids) + answer_ids
    assert row["labels"][-1] == tok.eos_token_id  # the model learns to stop


def test_labels_alpaca_frame_masked_answer_and_eos_kept(tmp_path):
    model, tok = sft.load_student("tiny", device="cpu")
    ex = sft.to_prompt_completion(sft.sft_record(ALPACA), "alpaca")
    assert ex["prompt"].startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Input:\nGood morning\n\n### Response:" in ex["prompt"]
    tr = sft.make_sft_trainer(model, tok, sft.sft_dataset([sft.sft_record(ALPACA)], "alpaca"), _cfg(tmp_path, packing=False))
    row = tr.train_dataset[0]
    prompt_ids, answer_ids = _tokens(tok, ex["prompt"]), _tokens(tok, "Bonjour") + [tok.eos_token_id]
    assert row["labels"] == [-100] * len(prompt_ids) + answer_ids


def test_chat_template_required_for_chat_data(tmp_path):
    model, tok = sft.load_student("tiny", device="cpu")
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        sft.make_sft_trainer(model, tok, sft.sft_dataset([sft.sft_record(CHAT)], "chat"), _cfg(tmp_path))


def test_bad_records_name_file_line_field(tmp_path):
    p = tmp_path/"d.jsonl"
    write_jsonl(p, [ALPACA, {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}])
    with pytest.raises(RecordError, match=r"d\.jsonl:2: messages\[1\]\.role: expected one of"):
        sft.read_sft_records(p)


# --- packing ------------------------------------------------------------------------------------------------------
PACK_LEN = 768  # the tiny tokenizer spends about 165 tokens on a seed task


def _packed_trainer(tmp_path, attn="sdpa"):
    model, tok = sft.load_student("tiny", device="cpu", attn_implementation=attn)
    recs = [sft.sft_record({"instruction": t.instruction, "input": t.instances[0].input, "output": t.instances[0].output})
            for t in data.seed_tasks()[:12]]
    tr = sft.make_sft_trainer(model, tok, sft.sft_dataset(recs, "chat"), _cfg(tmp_path, max_length=PACK_LEN, batch_size=2))
    return model.eval(), tr


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_do_not_attend_across_boundaries(tmp_path, attn):
    model, tr = _packed_trainer(tmp_path, attn)
    stats = sft.packing_stats(tr.train_dataset, PACK_LEN)
    assert stats["samples"] == 12 and stats["samples_per_sequence"] > 2, stats
    batch = tr.data_collator([tr.train_dataset[0], tr.train_dataset[1]])
    assert "attention_mask" not in batch and len(batch["cu_seq_lens_q"]) > 4  # flattened: several samples, one row
    assert sft.packed_leak(model, tr) < 1e-4
    # the check can fail: with the KV cache on, transformers ignores the per-sample positions and samples leak
    assert sft.packed_leak(model, tr, use_cache=True) > 1e-2


def test_packed_loss_equals_per_sample_loss(tmp_path):
    "The trainer's loss on a packed batch is the token-weighted loss of the samples run one by one."
    model, tr = _packed_trainer(tmp_path)
    rows = [tr.train_dataset[0], tr.train_dataset[1]]
    batch = tr.data_collator(rows)
    with torch.no_grad():
        packed = tr.compute_loss(model, dict(batch)).item()
        total, count = 0.0, 0
        for row in rows:
            start = 0
            for n in row["seq_lengths"]:
                ids = torch.tensor([row["input_ids"][start:start + n]])
                labels = torch.tensor(row["labels"][start:start + n])
                logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1], -1)
                target = labels[1:]
                keep = target != -100
                total -= logp[keep].gather(1, target[keep][:, None]).sum().item()
                count += int(keep.sum())
                start += n
    assert count > 0 and math.isclose(packed, total / count, rel_tol=1e-4), (packed, total / count)


# --- training -----------------------------------------------------------------------------------------------------
def test_loss_falls_when_overfitting_20_examples(tmp_path):
    model, tok = sft.load_student("tiny", device="cpu")
    short = sorted(data.seed_tasks(), key=lambda t: len(t.instruction + t.instances[0].input + t.instances[0].output))[:20]
    recs = [sft.sft_record({"instruction": t.instruction, "input": t.instances[0].input, "output": t.instances[0].output})
            for t in short]
    tr = sft.make_sft_trainer(model, tok, sft.sft_dataset(recs, "chat"),
                              _cfg(tmp_path, max_length=512, lr=1e-2, max_steps=40, batch_size=2, warmup_ratio=0.0))
    sft.train_sft(tr)
    curve = [l for _, l in sft.loss_history(tr)["train"]]
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < 0.5 * first, curve


def test_resume_from_checkpoint(tmp_path):
    model, tok = sft.load_student("tiny", device="cpu")
    ds = sft.sft_dataset([sft.sft_record(ALPACA), sft.sft_record(CHAT)] * 4, "chat")
    tr = sft.make_sft_trainer(model, tok, ds, _cfg(tmp_path, max_steps=2, save_steps=2, batch_size=1))
    assert sft.train_sft(tr)["resumed_from"] is None
    model, tok = sft.load_student("tiny", device="cpu")  # a fresh process would start here
    tr = sft.make_sft_trainer(model, tok, ds, _cfg(tmp_path, max_steps=4, save_steps=2, batch_size=1))
    out = sft.train_sft(tr)
    assert out["resumed_from"].endswith("checkpoint-2") and tr.state.global_step == 4
    assert [r["step"] for r in tr.state.log_history if "loss" in r] == [1, 2, 3, 4]  # steps 1-2 from the checkpoint


def test_lora_adapter_saves_reloads_and_merges(tmp_path):
    from peft import PeftModel
    model, tok = sft.load_student("tiny", device="cpu")
    ds = sft.sft_dataset([sft.sft_record(ALPACA), sft.sft_record(CHAT)] * 4, "chat")
    tr = sft.make_sft_trainer(model, tok, ds, _cfg(tmp_path, lr=5e-2, max_steps=6, batch_size=2),
                              peft_config=sft.lora_config(r=4, alpha=8, dropout=0.0))
    assert isinstance(tr.model, PeftModel)
    trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.5 * sum(p.numel() for p in tr.model.parameters())
    sft.train_sft(tr)
    x = torch.tensor([_tokens(tok, "<s><|user|>\nWhat is 12 plus 30?\n<|assistant|>\n")])
    tr.model.eval()
    with torch.no_grad(): trained = tr.model(input_ids=x).logits
    out = sft.save_student(tr, tmp_path/"student")           # adapter + merged model
    assert (out/"adapter"/"adapter_config.json").exists() and (out/"model.safetensors").exists()
    base, _ = load_model("tiny", device="cpu")
    with torch.no_grad(): base_logits = base(input_ids=x).logits
    assert (trained - base_logits).abs().max() > 1e-3           # the adapter changed something
    with sft._peft_init_quiet(): reloaded = PeftModel.from_pretrained(base, out/"adapter").eval()
    with torch.no_grad(): torch.testing.assert_close(reloaded(input_ids=x).logits, trained, atol=1e-5, rtol=1e-5)
    merged = reloaded.merge_and_unload()
    with torch.no_grad(): torch.testing.assert_close(merged(input_ids=x).logits, trained, atol=1e-5, rtol=1e-5)
    saved_merged, _ = load_model(str(out), device="cpu")
    with torch.no_grad(): torch.testing.assert_close(saved_merged(input_ids=x).logits, trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_progressive_stage2_starts_from_stage1(tmp_path, lora):
    write_jsonl(tmp_path/"stage1.jsonl", [ALPACA, CHAT] * 3)
    write_jsonl(tmp_path/"stage2.jsonl", [CHAT] * 4)
    stages = [{"name": "teacher_assistant", "data": "stage1.jsonl", "lr": 1e-2, "max_steps": 3},
              {"name": "teacher", "data": "stage2.jsonl", "lr": 1e-2, "max_steps": 2}]
    probe = sft.WeightProbe()
    runs = sft.train_stages("tiny", stages, tmp_path/"out", data_dir=tmp_path, max_length=128, logging_steps=1,
                            lora=sft.lora_config(r=4, dropout=0.0) if lora else None, callbacks=[probe], **NB)
    assert [r["stage"] for r in runs] == ["teacher_assistant", "teacher"]
    assert runs[1]["init"] == runs[0]["model"]
    base, _ = load_model("tiny", device="cpu")
    stage1, _ = load_model(runs[0]["model"], device="cpu")
    w = lambda m: m.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.equal(probe.seen[0], w(base))      # stage 1 starts from the base model
    assert torch.equal(probe.seen[1], w(stage1))    # stage 2 starts from what stage 1 saved
    assert not torch.equal(w(stage1), w(base))      # and stage 1 did learn
    assert runs[0]["records"] == 6 and runs[1]["records"] == 4
    # a rerun skips finished stages (no training: the probe sees nothing new)
    again = sft.train_stages("tiny", stages, tmp_path/"out", data_dir=tmp_path, max_length=128, logging_steps=1,
                             lora=sft.lora_config(r=4, dropout=0.0) if lora else None, callbacks=[probe], **NB)
    assert len(probe.seen) == 2 and [r["key"] for r in again] == [r["key"] for r in runs]


def test_stage_data_missing_is_a_clear_error(tmp_path):
    with pytest.raises(RecordError, match="nope.jsonl: record: file not found"):
        sft.train_stages("tiny", [{"name": "s1", "data": "nope.jsonl"}], tmp_path/"out", data_dir=tmp_path, **NB)
    with pytest.raises(ValueError, match="unknown keys"):
        sft.train_stages("tiny", [{"name": "s1", "data": "x", "learning_rate": 1}], tmp_path/"out", **NB)


# --- reward model -------------------------------------------------------------------------------------------------
def test_reward_model_separates_a_separable_set(tmp_path):
    pairs, counts = reward.preference_pairs(reward.synthetic_scored_answers(24))
    assert counts["pairs"] == 72 and counts["ties"] == 0
    train, held = reward.split_by_prompt(pairs, eval_frac=0.25)
    model, tok = reward.load_reward_model("tiny", device="cpu")
    before = reward.pairwise_accuracy(model, tok, held)["accuracy"]
    tr = reward.train_reward(model, tok, reward.reward_dataset(train),
                             reward.reward_config(tmp_path/"rm", lr=3e-3, epochs=3, max_length=256, logging_steps=1, **NB))
    after = reward.pairwise_accuracy(tr.model, tok, held)
    assert after["accuracy"] >= 0.95, (before, after["accuracy"])
    pts = reward.answer_points(held, after["rewards"])
    assert reward.spearman([p["score"] for p in pts], [p["reward"] for p in pts]) > 0.5


def test_reward_pairs_from_gpt4llm_comparison_format(tmp_path):
    v2 = [{"user_input": "Name a colour.", "responses_and_scores": [
        {"response": "Blue.", "score": 10, "source": "gpt4"}, {"response": "", "score": 3, "source": "icm-1.3b"},
        {"response": "A colour.", "score": 5, "source": "text-davinci-003"}]},
          {"user_input": "Say hi.", "responses_and_scores": [
        {"response": "Hi!", "score": 8, "source": "gpt4"}, {"response": "Hello!", "score": 8, "source": "text-davinci-003"}]}]
    (tmp_path/"comparison_data_v2.json").write_text(json.dumps(v2))
    pairs, counts = reward.preference_pairs(reward.read_scored_answers(tmp_path/"comparison_data_v2.json"))
    assert counts == {"prompts": 2, "answers": 5, "empty_answers": 1, "pairs_considered": 2, "ties": 1,
                      "below_min_gap": 0, "pairs": 1}
    assert (pairs[0]["chosen"], pairs[0]["rejected"], pairs[0]["margin"]) == ("Blue.", "A colour.", 5.0)
    assert pairs[0]["chosen_model"] == "gpt4"


# --- the student's answers, read by the evaluation stages ----------------------------------------------------------
def test_student_answers_feed_the_evaluation_stages(tmp_path):
    from selfinstruct_nb.eval_rouge import read_answers, user_oriented_items
    from selfinstruct_nb.judge import load_answers
    from selfinstruct_nb.llm import LLMClient, make_backend
    tiny, tok = load_model("tiny", device="cpu")
    tiny.save_pretrained(tmp_path/"student"); tok.save_pretrained(tmp_path/"student")
    tasks = sft.instruction_set("user_oriented", limit=3) + sft.instruction_set("vicuna", limit=2)
    reqs = sft.generation_requests(tasks, "chat", params={"max_tokens": 8, "temperature": 0})
    client = LLMClient(make_backend("transformers", model=str(tmp_path/"student"), device="cpu", batch_size=8), cache=None)
    files = sft.answer_files(client.run(reqs, desc="student"), model="student")
    assert client.stats["ok"] == 5 and client.backend.generate_calls == 1  # one batched call
    for name, recs in files.items(): write_jsonl(tmp_path/f"{name}.jsonl", recs)
    assert read_answers(tmp_path/"answers.jsonl", user_oriented_items())["student"].keys() == {t["id"] for t in tasks[:3]}
    assert set(load_answers(tmp_path/"vicuna_answers.jsonl")) == {1, 2}


# --- accelerate configs ----------------------------------------------------------------------------------------------
def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file
    from selfinstruct_nb.core import project_root
    want = {"single_gpu": ("NO", None), "multi_gpu": ("MULTI_GPU", None), "fsdp": ("FSDP", None),
            "zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3)}
    for name, (kind, stage) in want.items():
        cfg = load_config_from_file(str(project_root()/f"configs/accelerate/{name}.yaml"))
        assert (str(cfg.distributed_type).split(".")[-1], cfg.mixed_precision) == (kind, "bf16"), name
        assert (cfg.deepspeed_config or {}).get("zero_stage") == stage, name
    assert load_config_from_file(str(project_root()/"configs/accelerate/fsdp.yaml")).fsdp_config["fsdp_version"] == 2


# --- slow: the stage notebooks, and two processes with torchrun ------------------------------------------------------
def _fixture_run(run: Path) -> None:
    "What 20_distill writes: chat records with Orca system messages (stage 1 = 24, stage 2 = 8)."
    from selfinstruct_nb.finetune_data import to_messages
    systems = ["You are an AI assistant. You will be given a task. You must generate a detailed and long answer.", None,
               "You are a helpful assistant, who always provide explanation. Think like you are answering to a five year old."]
    recs = [{"id": t.id, "messages": to_messages(t.instruction, t.instances[0].input, t.instances[0].output, systems[i % 3])}
            for i, t in enumerate(data.seed_tasks()[:24])]
    write_jsonl(run/"20_distill/stage1.jsonl", recs)
    write_jsonl(run/"20_distill/stage2.jsonl", recs[:8])


def _papermill(nb: str, run: Path, **params) -> None:
    import papermill
    from selfinstruct_nb.core import project_root
    papermill.execute_notebook(str(project_root()/"nbs/pipeline"/nb), str(run/f"{nb}.out.ipynb"), kernel_name="selfinstruct-nb",
                               parameters={"run_dir": str(run), **params}, progress_bar=False)


@pytest.mark.slow
def test_stage_notebooks_smoke(tmp_path):
    "30_sft -> 31_reward -> 32_generate with their smoke defaults on fixture data; the evaluation stages read the answers."
    from selfinstruct_nb.eval_rouge import read_answers, user_oriented_items
    from selfinstruct_nb.judge import load_answers
    run = tmp_path/"run"; _fixture_run(run)
    _papermill("30_sft.ipynb", run)
    m30 = json.loads((run/"30_sft/metrics.json").read_text())
    assert [s["stage"] for s in m30["stages"]] == ["teacher_assistant", "teacher"]
    assert m30["stages"][1]["init"] == m30["stages"][0]["model"] and Path(m30["student"]).is_dir()
    assert all(s["packing"]["samples_per_sequence"] > 1.5 for s in m30["stages"])
    assert (run/"figures/sft_loss.png").exists()
    _papermill("31_reward.ipynb", run)
    m31 = json.loads((run/"31_reward/metrics.json").read_text())
    assert m31["source"] == "synthetic" and m31["accuracy_after"] >= 0.9 and (run/"figures/reward_vs_score.png").exists()
    _papermill("32_generate.ipynb", run)
    m32 = json.loads((run/"32_generate/metrics.json").read_text())
    assert (m32["answers"], m32["vicuna_answers"], m32["failed"]) == (4, 4, 0) and m32["student"] == m30["student"]
    assert len(read_answers(run/"32_generate/answers.jsonl", user_oriented_items())["student"]) == 4
    assert len(load_answers(run/"32_generate/vicuna_answers.jsonl")) == 4
    _papermill("32_generate.ipynb", run)  # a rerun answers from its journal
    assert json.loads((run/"32_generate/metrics.json").read_text())["stats"]["resumed"] == 8


@pytest.mark.slow
def test_two_processes_ddp_lora_progressive(tmp_path):
    "`torchrun --nproc_per_node 2 -m selfinstruct_nb.sft` on CPU (gloo): one writer, the merged LoRA student loads."
    import os, subprocess, sys
    from selfinstruct_nb.core import project_root
    run = tmp_path/"run"; _fixture_run(run)
    stages = [{"name": "a", "data": "20_distill/stage1.jsonl", "max_steps": 3, "lr": 1e-2},
              {"name": "b", "data": "20_distill/stage2.jsonl", "max_steps": 2, "lr": 1e-2}]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "selfinstruct_nb.sft", "--run-dir", str(run), "--stages", json.dumps(stages), "--device", "cpu",
           "--max-length", "512", "--grad-accum", "1", "--logging-steps", "1", "--lora"]
    out = subprocess.run(cmd, cwd=project_root(), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count('"stage": "b"') == 2  # both ranks finished both stages
    a = json.loads((run/"30_sft/a/stage.json").read_text())
    row = a["packing"]["tokens"] / a["packing"]["sequences"]   # one packed row holds at most 512 tokens
    assert [r["num_tokens"] for r in a["log_history"] if "loss" in r][0] > 1.5 * row  # step 1 counted two ranks' rows
    assert not (run/"30_sft/a/checkpoints").exists()
    model, tok = load_model(str(run/"30_sft/b/model"), device="cpu")
    assert (run/"30_sft/b/model/adapter/adapter_config.json").exists()
    # what rank 0 saved is what a single process gets by running the notebook with the same parameters: nothing to redo
    again = sft.run_sft(str(run), stages=stages, device="cpu", max_length=512, grad_accum=1, logging_steps=1, lora=True)
    assert [r["seconds"] for r in again] == [json.loads((run/f"30_sft/{n}/stage.json").read_text())["seconds"] for n in "ab"]
