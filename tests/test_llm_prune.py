"""Depth pruning (ShortGPT block influence), width pruning (FFN channels, whole KV groups) and
top-k distillation of a causal LM, on the tiny random Llama of tests/lm_models.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.llm.depth import block_importance, depth_prune, drop_layers
from tasks.llm.distill import distill, make_optimizer, topk_kd_loss, topk_logits
from tasks.llm.width import width_prune
from tests.lm_models import tiny_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny"), layers=4)


@pytest.fixture
def model(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def calib():
    return torch.randint(0, 300, (6, 24), generator=torch.Generator().manual_seed(1))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _identity_layer(model, index):
    """Zero the writes of block ``index`` into the residual stream: the block becomes the identity."""
    layer = model.model.layers[index]
    torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    torch.nn.init.zeros_(layer.mlp.down_proj.weight)


def _generate(model, ids):
    return model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)


def test_block_importance_scores_every_layer_and_the_identity_block_lowest(model, calib):
    _identity_layer(model, 2)
    scores = block_importance(model, calib, batch=4)
    assert len(scores) == 4
    assert abs(scores[2]) < 1e-6
    assert min(scores[i] for i in (0, 1, 3)) > 1e-4


def test_drop_layers_of_the_identity_block_keeps_logits_and_generate(model, calib):
    _identity_layer(model, 1)
    pruned = drop_layers(model, [0, 2, 3])
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    assert len(model.model.layers) == 4  # the input is untouched
    torch.testing.assert_close(_logits(pruned, calib), _logits(model, calib), atol=1e-5, rtol=1e-5)
    assert torch.equal(_generate(pruned, calib[:2, :8]), _generate(model, calib[:2, :8]))


@pytest.mark.parametrize("keep, message", [([], "empty"), ([0, 4], "out of range"), ([0, 0], "duplicate")])
def test_drop_layers_refuses_bad_keep_in_one_line(model, keep, message):
    with pytest.raises(ValueError, match=message) as err:
        drop_layers(model, keep)
    assert "\n" not in str(err.value) and "keep" in str(err.value)


def test_depth_prune_drops_lowest_influence_and_generates(model, calib):
    _identity_layer(model, 3)
    pruned, info = depth_prune(model, calib, layers=2)
    assert len(info["dropped"]) == 2 and 3 in info["dropped"]
    assert info["kept"] == sorted(set(range(4)) - set(info["dropped"]))
    assert len(info["importance"]) == 4
    assert pruned.config.num_hidden_layers == 2
    out = _generate(pruned, calib[:2, :8])
    assert out.shape == (2, 14)


def test_width_prune_runs_generates_and_rebuilds_from_config(model, calib):
    pruned, info = width_prune(model, calib, ffn_keep=0.5, kv_groups_keep=1)
    cfg = pruned.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 2, 1, 16)
    assert info["params_after"] < info["params_before"]
    assert all(len(kept) == 1 for kept in info["kv_groups_kept"])
    layer = pruned.model.layers[0]
    assert layer.self_attn.q_proj.out_features == 32 and layer.self_attn.k_proj.out_features == 16
    assert layer.mlp.gate_proj.out_features == 64 and layer.mlp.down_proj.in_features == 64
    assert _generate(pruned, calib[:2, :8]).shape == (2, 14)
    rebuilt = AutoModelForCausalLM.from_config(cfg).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    torch.testing.assert_close(_logits(rebuilt, calib), _logits(pruned, calib))


def test_width_prune_at_full_width_is_the_same_model(model, calib):
    pruned, info = width_prune(model, calib)
    assert info["intermediate_size"] == 128 and info["num_key_value_heads"] == 2
    torch.testing.assert_close(_logits(pruned, calib), _logits(model, calib))


def test_width_prune_keeps_the_ffn_channels_that_carry_activation(model, calib):
    """Channels whose down_proj column is large but whose activation is zero (gate row zeroed) must go first."""
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.mlp.gate_proj.weight[:64])
    pruned, _ = width_prune(model, calib, ffn_keep=0.5)
    torch.testing.assert_close(_logits(pruned, calib), _logits(model, calib), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, key", [({"ffn_keep": 0.0}, "ffn_keep"), ({"kv_groups_keep": 3}, "kv_groups_keep")])
def test_width_prune_refuses_bad_sizes(model, calib, kwargs, key):
    with pytest.raises(ValueError, match=key):
        width_prune(model, calib, **kwargs)


def test_topk_logits_shapes_dtypes_and_log_probabilities(model, calib):
    values, indices = topk_logits(model, calib, k=8, batch=4)
    assert values.shape == indices.shape == (6, 24, 8)
    assert values.dtype == torch.float16 and indices.dtype == torch.int32
    assert (values[..., :-1] >= values[..., 1:]).all() and (values <= 0).all()
    full = torch.log_softmax(_logits(model, calib), dim=-1)
    torch.testing.assert_close(values[..., 0].float(), full.max(dim=-1).values, atol=2e-3, rtol=1e-3)


def test_kd_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(model, calib):
    vocab = model.config.vocab_size
    values, indices = topk_logits(model, calib[:2], k=vocab)
    logits = _logits(model, calib[:2])
    assert abs(float(topk_kd_loss(logits, values, indices))) < 1e-3
    assert float(topk_kd_loss(logits * 3.0 + 1.0, values, indices)) > 1e-2
    small_v, small_i = topk_logits(model, calib[:2], k=4)
    assert float(topk_kd_loss(torch.zeros_like(logits), small_v, small_i, temperature=2.0)) > 0


def test_distill_lowers_the_loss_deterministically_and_resumes(model, calib):
    teacher = model
    student = drop_layers(teacher, [0, 3])
    values, indices = topk_logits(teacher, calib, k=16)
    before = float(topk_kd_loss(_logits(student, calib), values, indices))
    seen = []
    history = distill(student, calib, values, indices, epochs=10, batch=3, lr=3e-3, on_step=seen.append, seed=0)
    after = float(topk_kd_loss(_logits(student, calib), values, indices))
    assert len(history) == 20 and seen == history and history[-1]["tokens"] == 20 * 3 * 24
    assert after < 0.8 * before
    # the same seed gives the same run; stopping at step 7 and resuming gives the same weights
    again = drop_layers(teacher, [0, 3])
    assert distill(again, calib, values, indices, epochs=10, batch=3, lr=3e-3, seed=0) == history
    part = drop_layers(teacher, [0, 3])
    opt = make_optimizer(part, lr=3e-3)
    distill(part, calib, values, indices, epochs=10, batch=3, lr=3e-3, max_steps=7, optimizer=opt)
    state = {k: v.clone() for k, v in part.state_dict().items()}
    resumed = drop_layers(teacher, [0, 3])
    resumed.load_state_dict(state)
    rest = distill(
        resumed, calib, values, indices, epochs=10, batch=3, lr=3e-3, start_step=7, optimizer_state=opt.state_dict()
    )
    assert [r["step"] for r in rest] == list(range(8, 21)) and rest == history[7:]
    torch.testing.assert_close(_logits(resumed, calib), _logits(again, calib))


def test_width_prune_refuses_a_model_without_llama_projections(calib):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    with pytest.raises(ValueError, match="mlp.gate_proj"):
        width_prune(gpt2, calib, ffn_keep=0.5)
    assert len(block_importance(gpt2, calib)) == 2
    assert drop_layers(gpt2, [1]).config.n_layer == 1
