"""The model layer on a tiny random BERT: training learns, scoring is order-safe,
artifacts round-trip and refuse tampering."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from anomdet.artifact import (
    MANIFEST_FILE,
    load_artifact,
    recorded_scoring,
    save_artifact,
    sha256_file,
)
from anomdet.batching import (
    TOKENIZE_CHUNK,
    BalancedBatches,
    distinct_texts,
    encode,
    host_batch,
    prefetched,
    token_budget_batches,
)
from anomdet.device import GPU_MAX_BATCH_ROWS, GPU_MAX_BATCH_TOKENS
from anomdet.encoder import TINY_RANDOM, MeanPooledBertForSequenceClassification, load_base_model
from anomdet.finetune import fine_tune, probe_head
from anomdet.inference import for_inference, predict_scores
from tests.configs import train_config


def _toy(n: int = 400, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = ["user {} signed in from office", "report {} exported to storage",
              "payment {} settled on time", "cache {} refreshed nightly"]
    odd = ["user {} signed in from unknown country at 3am", "payment {} reversed twice by bank"]
    labels = (rng.random(n) < 0.2).astype(int)
    texts = [(odd if y else normal)[rng.integers(len(odd if y else normal))].format(i)
             for i, y in enumerate(labels)]
    return texts, labels


@pytest.fixture(scope="module")
def trained() -> tuple:
    texts, labels = _toy()
    model, tok = load_base_model(TINY_RANDOM, seed=3)
    config = train_config(epochs=3, learning_rate=1e-3, max_length=32, seed=3, batch_size=16,
                          min_steps=60)
    result = fine_tune(model, tok, texts[:300], labels[:300], texts[300:], labels[300:], config)
    return model, tok, texts, labels, result


def test_fine_tuning_learns_the_toy_task(trained: tuple) -> None:
    model, tok, texts, labels, result = trained
    scores = predict_scores(model, tok, texts[300:], max_length=32)
    assert average_precision_score(labels[300:], scores) > 0.9
    assert result.history[0]["epoch"] == 1
    # Check 0 is the probed head before any step; fine-tuning is kept only if it beats it.
    assert result.best_val_pr_auc >= max(h["val_pr_auc"] for h in result.history)
    if result.best_epoch >= 1:
        assert result.best_val_pr_auc == result.history[result.best_epoch - 1]["val_pr_auc"]


def test_training_is_repeatable_under_a_seed() -> None:
    texts, labels = _toy(120, seed=1)
    runs = []
    for _ in range(2):
        model, tok = load_base_model(TINY_RANDOM, seed=9)
        config = train_config(epochs=1, learning_rate=1e-3, max_length=24, seed=9, min_steps=20)
        fine_tune(model, tok, texts[:80], labels[:80], texts[80:], labels[80:], config)
        runs.append(predict_scores(model, tok, texts[80:], max_length=24))
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-6)


def test_scores_come_back_in_input_order(trained: tuple) -> None:
    model, tok, texts, _, _ = trained
    sample = texts[300:340]
    forward = predict_scores(model, tok, sample, max_length=32, batch_size=7)
    backward = predict_scores(model, tok, sample[::-1], max_length=32, batch_size=5)
    one_by_one = np.array([predict_scores(model, tok, [t], max_length=32)[0] for t in sample])
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)
    np.testing.assert_allclose(forward, one_by_one, atol=1e-5)


def test_encode_counts_truncated_texts() -> None:
    _, tok = load_base_model(TINY_RANDOM, seed=0)
    ids, truncated = encode(tok, ["short", "word " * 100], max_length=16)
    assert truncated == 1
    assert max(len(x) for x in ids) == 16


def test_encode_gives_the_tokenizers_own_ids_on_parallel_threads() -> None:
    _, tok = load_base_model(TINY_RANDOM, seed=0)
    texts, _ = _toy(3 * TOKENIZE_CHUNK + 17, seed=9)  # several chunks, so several threads
    texts[5] = "a much longer line " * 20
    # transformers leaves a call's truncation on its tokenizer; encode must not inherit it.
    tok(["x"], truncation=True, max_length=8)
    ids, truncated = encode(tok, texts, max_length=32)
    assert ids == tok(texts, truncation=True, max_length=32)["input_ids"]
    assert truncated == sum(len(x) > 32 for x in tok(texts)["input_ids"]) >= 1
    whole, none_cut = encode(tok, texts, max_length=512)
    assert whole == tok(texts)["input_ids"] and none_cut == 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_host_batches_pad_as_the_tokenizer_does(side: str) -> None:
    _, tok = load_base_model(TINY_RANDOM, seed=0)
    tok.padding_side = side
    ids, _ = encode(tok, ["disk full", "a longer line about the disk being full", "ok"], 32)
    index = np.array([2, 0, 1])
    ours = host_batch(ids, index, tok.pad_token_id, left=side == "left")
    theirs = tok.pad({"input_ids": [ids[i] for i in index]}, return_tensors="pt")
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key


def test_prefetched_keeps_order_and_works_ahead_of_the_caller() -> None:
    made: list[int] = []

    def make(item: int) -> int:
        made.append(item)
        return item * item

    results = prefetched(make, range(10), ahead=2)
    assert next(results) == 0
    # Once the first result is handed over, the worker makes the next two unasked.
    deadline = time.monotonic() + 10
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made == [0, 1, 2]
    assert list(results) == [i * i for i in range(1, 10)]


def test_gpu_sized_batches_give_the_same_scores(trained: tuple) -> None:
    model, tok, texts, _, _ = trained
    cpu = predict_scores(model, tok, texts, max_length=32)
    gpu_sized = predict_scores(model, tok, texts, max_length=32, batch_size=GPU_MAX_BATCH_ROWS,
                               max_tokens=GPU_MAX_BATCH_TOKENS)
    np.testing.assert_allclose(cpu, gpu_sized, atol=1e-5)


_HOST_READS = ("item", "cpu", "tolist", "__float__", "__bool__", "__int__")


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the tensor methods that read a value back to the host (on a GPU, each waits
    for every queued kernel)."""
    calls: list[str] = []
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _name: str = name,
                    _original: object = original, **kwargs: object) -> object:
            calls.append(_name)
            return _original(self, *args, **kwargs)  # type: ignore[operator]
        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_scoring_reads_back_once_however_many_batches(trained: tuple,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok, texts, _, _ = trained
    calls = _count_host_reads(monkeypatch)
    predict_scores(model, tok, texts[:200], max_length=32, batch_size=200, max_tokens=10**6)
    one_batch = len(calls)
    calls.clear()
    predict_scores(model, tok, texts[:200], max_length=32, batch_size=4)
    assert len(calls) == one_batch


def test_training_steps_do_not_read_back_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    texts, labels = _toy(200, seed=2)
    calls = _count_host_reads(monkeypatch)
    counts = []
    for steps in (4, 24):
        model, tok = load_base_model(TINY_RANDOM, seed=2)
        config = train_config(max_length=32, seed=2, min_steps=steps, max_steps=steps,
                              evaluations=1, probe_head=False)
        calls.clear()
        fine_tune(model, tok, texts[:150], labels[:150], texts[150:], labels[150:], config)
        counts.append(len(calls))
    assert counts[0] == counts[1]


def test_models_attend_with_sdpa() -> None:
    model, _ = load_base_model(TINY_RANDOM, seed=0)
    assert model.config._attn_implementation == "sdpa"


def test_bf16_weights_score_close_to_fp32(trained: tuple) -> None:
    # What a GPU with bf16 scores with (for_inference's copy there); bf16 runs on CPUs too.
    model, tok, texts, _, _ = trained
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    fp32 = predict_scores(model, tok, texts[300:], max_length=32)
    ours = predict_scores(bf16, tok, texts[300:], max_length=32)
    assert 0 < np.max(np.abs(fp32 - ours)) < 0.02


def test_balanced_batches_hold_the_anomaly_share_and_see_every_text() -> None:
    labels = np.array([1] * 20 + [0] * 980)
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    batches = BalancedBatches(labels, lengths, 16, 0.25, np.random.default_rng(1))
    drawn = [batches.next() for _ in range(96)]  # 96 * 12 normal rows > 980: a full cycle
    assert all(len(b) == 16 and labels[b].sum() == 4 for b in drawn)
    assert set(np.concatenate(drawn).tolist()) == set(range(1000))
    # Sorted by length within each class, so padding stays low.
    spread = np.mean([np.ptp(lengths[b][labels[b] == 0]) for b in drawn])
    assert spread < 0.25 * np.ptp(lengths)
    with pytest.raises(ValueError, match="both classes"):
        BalancedBatches(np.zeros(10, dtype=int), [5] * 10, 4, 0.25, np.random.default_rng(0))


def test_balanced_batches_keep_a_natural_share_above_the_floor() -> None:
    labels = np.array([1, 0] * 50)
    batches = BalancedBatches(labels, [5] * 100, 16, 0.25, np.random.default_rng(0))
    assert batches.per_batch == [8, 8]


def test_plentiful_anomalies_keep_their_natural_share_and_few_are_oversampled() -> None:
    labels = np.array([1] * 60 + [0] * 900)  # 6.25%: one per batch of 16
    rng = np.random.default_rng(0)
    assert BalancedBatches(labels, [5] * 960, 16, 0.25, rng, plentiful=60).per_batch == [15, 1]
    assert BalancedBatches(labels, [5] * 960, 16, 0.25, rng, plentiful=61).per_batch == [12, 4]
    assert BalancedBatches(labels, [5] * 960, 16, 0.25, rng, plentiful=None).per_batch == [12, 4]
    # Fewer than one per batch by nature still gets one, so every step sees both classes.
    rare = np.array([1] * 20 + [0] * 980)
    assert BalancedBatches(rare, [5] * 1000, 16, 0.25, rng, plentiful=10).per_batch == [15, 1]


def test_fine_tuning_applies_the_plentiful_rule_from_the_config(
        caplog: pytest.LogCaptureFixture) -> None:
    texts, labels = _toy(200, seed=2)
    anomalous = len(set(t for t, y in zip(texts, labels, strict=True) if y))
    for plentiful, per_batch in ((anomalous, 3), (anomalous + 1, 4)):
        model, tok = load_base_model(TINY_RANDOM, seed=1)
        config = train_config(max_length=16, seed=1, batch_size=16, min_steps=1, max_steps=1,
                              evaluations=1, plentiful_anomalies=plentiful)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="anomdet.finetune"):
            fine_tune(model, tok, texts, labels, texts[:40], labels[:40], config)
        assert f"anomalous, {per_batch} per batch of 16" in caplog.text


def test_training_sees_each_distinct_text_once_with_its_majority_label() -> None:
    texts, labels = distinct_texts(["disk full", "Disk  FULL", "disk full", "ok", "ok"],
                                   [1, 1, 0, 0, 0])
    assert texts == ["disk full", "ok"] and labels.tolist() == [1, 0]


@pytest.mark.parametrize(("rows", "steps"), [(100, 40), (1600, 300), (100_000, 500)])
def test_schedule_counts_steps_with_a_floor_and_a_cap(rows: int, steps: int) -> None:
    config = train_config(epochs=3, batch_size=16, min_steps=40, max_steps=500)
    assert config.total_steps(rows) == steps


def test_mean_pooling_ignores_padding_and_survives_a_round_trip(tmp_path: Path) -> None:
    model, tok = load_base_model(TINY_RANDOM, seed=1)
    assert isinstance(model, MeanPooledBertForSequenceClassification)
    model.eval()
    alone = predict_scores(model, tok, ["disk full on node seven"], max_length=32)
    # Scored beside a much longer text, the short one is padded; the mean must not move.
    padded = predict_scores(model, tok, ["disk full on node seven", "x " * 20], max_length=32)
    assert padded[0] == pytest.approx(alone[0], abs=1e-5)
    cls_model, _ = load_base_model(TINY_RANDOM, seed=1, pooling="cls")
    assert not isinstance(cls_model, MeanPooledBertForSequenceClassification)


def test_probed_head_gives_the_regressions_log_odds_and_ranks_before_any_step() -> None:
    texts, labels = _toy(300, seed=4)
    model, tok = load_base_model(TINY_RANDOM, seed=4)
    ids, _ = encode(tok, texts[:200], 32)
    assert probe_head(model, tok, ids, labels[:200], train_config(), np.random.default_rng(0))
    model.eval()
    batch = tok(texts[200:], padding=True, return_tensors="pt")
    with torch.no_grad():
        features = model.pooled(**batch).double().numpy()
        logits = model(**batch).logits.double().numpy()
    weight = (model.classifier.weight[1] - model.classifier.weight[0]).detach().double().numpy()
    bias = float((model.classifier.bias[1] - model.classifier.bias[0]).detach())
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], features @ weight + bias, atol=1e-4)
    # A random encoder's features still tell the toy classes apart once the head is fitted.
    scores = predict_scores(model, tok, texts[200:], max_length=32)
    assert average_precision_score(labels[200:], scores) > 0.9


def test_fine_tuning_keeps_the_probed_start_when_no_step_beats_it() -> None:
    texts, labels = _toy(300, seed=5)
    model, tok = load_base_model(TINY_RANDOM, seed=5)
    # A learning rate this high collapses the model to one score for every text at once,
    # whatever the thread count's rounding: no check can beat the start. (At 0.5 the
    # wrecked model still told the toy classes apart by a hair on one thread.)
    config = train_config(learning_rate=2.0, max_length=32, seed=5, min_steps=12, max_steps=12,
                          evaluations=3, patience=3, warmup_ratio=0.0)
    ids, _ = encode(tok, texts[:200], 32)
    probed, _ = load_base_model(TINY_RANDOM, seed=5)
    probe_head(probed, tok, ids, labels[:200], config, np.random.default_rng(config.seed))
    result = fine_tune(model, tok, texts[:200], labels[:200], texts[200:], labels[200:], config)
    assert result.best_epoch == 0
    assert all(h["val_pr_auc"] < result.best_val_pr_auc for h in result.history)
    for name, value in probed.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)


def test_a_random_head_is_kept_when_probing_is_off() -> None:
    texts, labels = _toy(200, seed=6)
    model, tok = load_base_model(TINY_RANDOM, seed=6)
    start = model.classifier.weight.detach().clone()
    config = train_config(probe_head=False, max_length=32, min_steps=1, max_steps=1, evaluations=1)
    result = fine_tune(model, tok, texts[:150], labels[:150], texts[150:], labels[150:], config)
    assert result.best_epoch == 1
    assert not torch.equal(model.classifier.weight, start)  # one step moved it, no probe
    cls_model, _ = load_base_model(TINY_RANDOM, seed=6, pooling="cls")
    ids, _ = encode(tok, texts[:150], 32)
    assert not probe_head(cls_model, tok, ids, labels[:150], config, np.random.default_rng(0))


def test_token_budget_batches_respect_both_limits() -> None:
    lengths = np.random.default_rng(0).integers(3, 120, size=1000)
    lengths[7] = 900  # longer than the budget: a batch of its own
    batches = token_budget_batches(lengths, max_rows=64, max_tokens=512)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 512
    assert [7] in [b.tolist() for b in batches]
    # Short texts share wide batches, long ones narrow ones.
    widths = {int(lengths[b].max()): len(b) for b in batches}
    assert widths[min(widths)] > widths[max(widths)]


def test_int8_scores_track_fp32_and_artifacts_keep_their_precision(
    trained: tuple, tmp_path: Path
) -> None:
    model, tok, texts, labels, _ = trained
    int8 = for_inference(model, "int8")
    assert for_inference(model, "fp32") is model and int8 is not model
    fp32_scores = predict_scores(model, tok, texts[300:], max_length=32)
    int8_scores = predict_scores(int8, tok, texts[300:], max_length=32)
    # Close, but not equal: the tiny model's scores sit so close together that int8
    # noise reorders them, which is why "auto" checks validation PR-AUC first.
    assert 0 < np.max(np.abs(fp32_scores - int8_scores)) < 0.05
    # The original keeps its fp32 weights for saving.
    assert model.classifier.weight.dtype == torch.float32
    directory = tmp_path / "int8"
    save_artifact(model, tok, directory, {"threshold": 0.5, "max_length": 32,
                                          "precision": "int8"})
    loaded = load_artifact(directory)
    assert loaded.precision == "int8"
    np.testing.assert_allclose(
        predict_scores(loaded.model, loaded.tokenizer, texts[300:], max_length=32),
        int8_scores, atol=1e-6)
    with pytest.raises(ValueError, match="precision 'int4'"):
        for_inference(model, "int4")


def test_artifact_round_trip_and_checksum(trained: tuple, tmp_path: Path) -> None:
    model, tok, texts, _, _ = trained
    directory = tmp_path / "v1"
    sha = save_artifact(model, tok, directory, {"threshold": 0.42, "max_length": 32,
                                                "precision": "fp32"})
    loaded = load_artifact(directory, expected_sha256=sha)
    assert loaded.threshold == 0.42
    assert loaded.meta["id2label"] == {"0": "normal", "1": "anomalous"}
    before = predict_scores(model, tok, texts[:20], max_length=32)
    after = predict_scores(loaded.model, loaded.tokenizer, texts[:20], max_length=32)
    np.testing.assert_allclose(before, after, atol=1e-6)
    assert not list(tmp_path.glob(".tmp-*")), "temporary folder left behind"
    with pytest.raises(ValueError, match="exists already"):
        save_artifact(model, tok, directory, {"threshold": 0.5})


def test_corrupted_artifact_is_refused(trained: tuple, tmp_path: Path) -> None:
    model, tok, *_ = trained
    directory = tmp_path / "v1"
    save_artifact(model, tok, directory, {"threshold": 0.5})
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        load_artifact(directory)
    with pytest.raises(ValueError, match="missing"):
        load_artifact(tmp_path / "nowhere")


def test_unknown_base_model_says_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="tiny-random"):
        load_base_model("no-such-org/no-such-model", seed=0)


def test_checksum_covers_every_file_of_the_artifact(trained: tuple, tmp_path: Path) -> None:
    model, tok, *_ = trained
    directory = tmp_path / "v1"
    sha = save_artifact(model, tok, directory, {"threshold": 0.5, "max_length": 32})
    assert sha == sha256_file(directory / MANIFEST_FILE)
    # The threshold in the metadata is covered: 1e-300 would flag every record.
    meta = directory / "anomdet.json"
    original = meta.read_text()
    meta.write_text(original.replace('"threshold": 0.5', '"threshold": 1e-300'))
    with pytest.raises(ValueError, match="corrupted: file checksum of anomdet.json"):
        load_artifact(directory, expected_sha256=sha)
    meta.write_text(original)
    (directory / "added_tokens.json").write_text("{}")
    with pytest.raises(ValueError, match="files it was not saved with: added_tokens.json"):
        load_artifact(directory, expected_sha256=sha)
    (directory / "added_tokens.json").unlink()
    (directory / MANIFEST_FILE).write_text((directory / MANIFEST_FILE).read_text() + " ")
    with pytest.raises(ValueError, match="manifest checksum .* does not match the database"):
        load_artifact(directory, expected_sha256=sha)


def test_the_database_decides_threshold_precision_and_length(trained: tuple,
                                                             tmp_path: Path) -> None:
    model, tok, *_ = trained
    directory = tmp_path / "v1"
    sha = save_artifact(model, tok, directory, {"threshold": 0.5, "max_length": 32,
                                                "precision": "fp32"})
    recorded = recorded_scoring(0.75, {"max_length": 24, "inference_precision": "int8"})
    loaded = load_artifact(directory, expected_sha256=sha, recorded=recorded)
    assert (loaded.threshold, loaded.max_length, loaded.precision) == (0.75, 24, "int8")


def test_an_artifact_without_a_manifest_or_a_precision_is_refused(
        trained: tuple, tmp_path: Path) -> None:
    model, tok, *_ = trained
    directory = tmp_path / "v1"
    save_artifact(model, tok, directory, {"threshold": 0.5, "max_length": 32})
    with pytest.raises(ValueError, match="records no precision"):
        load_artifact(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(ValueError, match=f"has no {MANIFEST_FILE}"):
        load_artifact(directory, expected_sha256=sha256_file(directory / "model.safetensors"))


@pytest.mark.parametrize("val_anomalies", [20, 40])
def test_fine_tuning_stops_at_a_perfect_ranking_of_enough_validation_anomalies(
        val_anomalies: int) -> None:
    # Anomalies that one word gives away: the tiny model ranks them perfectly at once.
    texts = [f"heartbeat {i} ok" for i in range(240)] + [f"alarm {i} fire" for i in range(60)]
    labels = np.array([0] * 240 + [1] * 60)
    val_texts = [f"heartbeat {i} ok" for i in range(300, 400)] + [
        f"alarm {i} fire" for i in range(300, 300 + val_anomalies)]
    val_labels = np.array([0] * 100 + [1] * val_anomalies)
    model, tok = load_base_model(TINY_RANDOM, seed=3)
    config = train_config(epochs=3, learning_rate=1e-3, max_length=16, seed=3, batch_size=16,
                          min_steps=120, patience=6)
    result = fine_tune(model, tok, texts, labels, val_texts, val_labels, config)
    assert all(h["val_pr_auc"] == 1.0 for h in result.history)
    if val_anomalies >= 30:  # a perfect ranking that no check can beat: stop at the first
        assert [h["step"] for h in result.history] == [result.steps] == [20]
    else:  # a perfect ranking of so few anomalies is no reason to stop
        assert result.steps == config.total_steps(len(texts)) == 120
