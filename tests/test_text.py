"""Text data and transformer export: stdlib sentences, stacked token rows, multi-input ONNX."""

import numpy as np
import onnx
import pytest
import torch

from tasks.core.context import StepContext
from tasks.datasets.text import sentences
from tasks.models.transformer import TEXT_INPUTS, layer_student
from tasks.runtime.onnx import ort_feed, ort_predict, ort_session, to_onnx
from tasks.steps.text_data import TextDataConfig
from tasks.steps.text_data import run as text_data
from tests.text_models import tiny_encoder, token_rows

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")


def test_sentences_keep_prose_drop_code_and_duplicates():
    docs = [
        "Return the sum of two numbers given as arguments.\n\n>>> add(1, 2)\n3",
        "return the SUM of two numbers given as arguments.  Call foo(x) to start the engine now.",
        "Short one.\nThis sentence spans\n    two lines of the docstring text.",
    ]
    got = sentences(iter(docs), min_words=5, max_words=20)
    assert got == [
        "Return the sum of two numbers given as arguments.",
        "This sentence spans two lines of the docstring text.",
    ]


def test_text_data_splits_are_disjoint_tokenized_and_seeded():
    cfg = TextDataConfig(max_files=120, n_calib=8, n_val=8, n_eval=16, max_train=32, seq_len=24)
    a, b = text_data(cfg=cfg, ctx=StepContext(seed=0)), text_data(cfg=cfg, ctx=StepContext(seed=0))
    assert a.task == "embedding" and a.input_names == TEXT_INPUTS and a.num_classes == 0
    assert a.x_train.shape == (32, 3, 24) and a.x_test.shape == (16, 3, 24) and a.x_calib.shape == (8, 3, 24)
    assert a.x_train.dtype == torch.long and bool((a.y_train == -1).all())
    assert torch.equal(a.x_train, b.x_train)  # same seed, same sets
    rows = {tuple(r.flatten().tolist()) for x in (a.x_train, a.x_val, a.x_test, a.x_calib) for r in x}
    assert len(rows) == 64  # deduplicated sentences, disjoint splits
    mask = a.x_train[:, 1]
    assert bool((a.x_train[:, 0][mask == 0] == 0).all())  # padding ids where the mask is 0
    other = text_data(cfg=cfg, ctx=StepContext(seed=1))
    assert not torch.equal(a.x_test, other.x_test)


def test_text_data_bad_config_is_named():
    with pytest.raises(ValueError, match="seq_len: 0 is not >= 1"):
        text_data(cfg=TextDataConfig(seq_len=0), ctx=StepContext())


def test_multi_input_export_has_named_inputs_with_dynamic_batch_and_sequence():
    model, _ = tiny_encoder()
    data = to_onnx(model, token_rows(4), input_names=TEXT_INPUTS, output="sentence_embedding")
    graph = onnx.load_from_string(data).graph
    assert [i.name for i in graph.input] == TEXT_INPUTS
    for i in graph.input:
        dims = i.type.tensor_type.shape.dim
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert not dims[0].HasField("dim_value") and not dims[1].HasField("dim_value")  # symbolic
    sess = ort_session(data, threads=1)
    for n, seq in ((1, 9), (5, 16), (3, 31)):  # batch and sequence lengths never traced
        x = token_rows(n, seq, seed=n)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(ort_predict(sess, x), ref, atol=1e-5)
    feed = ort_feed(sess, token_rows(2))
    assert sorted(feed) == sorted(TEXT_INPUTS) and all(v.dtype == np.int64 for v in feed.values())
    with pytest.raises(ValueError, match="stacked"):
        ort_feed(sess, np.zeros((2, 16), dtype=np.int64))


def test_padding_does_not_change_the_embedding():
    model, _ = tiny_encoder()
    x = token_rows(3, 12)
    padded = torch.cat([x, torch.zeros(3, 3, 8, dtype=torch.long)], dim=2)  # 8 more pad tokens
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded), atol=1e-5, rtol=1e-5)


def test_layer_student_copies_the_chosen_teacher_layers():
    teacher, arch = tiny_encoder(layers=4)
    s_arch, s_state = layer_student(arch, teacher.state_dict(), [0, 3])
    assert s_arch["config"]["num_hidden_layers"] == 2
    from tasks.models.transformer import SentenceEncoder

    student = SentenceEncoder(s_arch["config"], s_arch["normalize"])
    student.load_state_dict(s_state, strict=True)
    t = teacher.state_dict()
    assert torch.equal(
        s_state["encoder.encoder.layer.1.output.dense.weight"], t["encoder.encoder.layer.3.output.dense.weight"]
    )
    assert torch.equal(
        s_state["encoder.embeddings.word_embeddings.weight"], t["encoder.embeddings.word_embeddings.weight"]
    )
    with pytest.raises(ValueError, match="0..3"):
        layer_student(arch, teacher.state_dict(), [0, 4])


def test_encoder_artifact_round_trips_through_the_codec(tmp_path):
    from pipelines.store import artifacts
    from tasks.models.build import load_model, make_artifact
    from tasks.models.transformer import encoder_arch
    from tests.text_models import TRUSTED

    model, _ = tiny_encoder()
    arch = encoder_arch(model.encoder.config.to_dict())  # a full HF config (id2label has int keys)
    art = make_artifact(model, arch, name="enc", kind="teacher")
    back = artifacts.load(artifacts.save(art, tmp_path / "a"))
    x = token_rows(3)
    with torch.no_grad():
        torch.testing.assert_close(load_model(back, TRUSTED)(x), model(x))
