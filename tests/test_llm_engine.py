"""The continuous-batching engine (tasks/llm/engine.py) on the tiny random Llama, torch and ONNX Runtime:
padded batches match unpadded rows, concurrent greedy streams give each prompt's tokens generated alone,
batching really shares steps, seeded sampling ignores its batch, a consumer that stops frees its slot,
finish reasons and bad requests."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from tasks.llm.decoder import OpenVinoDecoder, OrtDecoder, TorchDecoder
from tasks.llm.engine import Engine, Sampling
from tasks.llm.export import export_decoder
from tasks.llm.sampling import Sampler
from tests.lm_models import varied_llama

LENGTHS = (3, 11, 5, 17, 1, 8)
NEW = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return varied_llama(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def decoders(model):
    files = export_decoder(model)
    return {"torch": TorchDecoder(model), "ort": OrtDecoder(files), "openvino": OpenVinoDecoder(files)}


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [[int(t) for t in rng.integers(0, 300, n)] for n in LENGTHS]


def alone(decoder, prompt: list[int], new: int = NEW) -> list[int]:
    return [int(t) for t in decoder.generate(np.array([prompt]), new)[0]]


async def staggered(engine: Engine, items: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """Each prompt submitted a little after the previous one, so rows join a running batch."""

    async def one(i: int) -> list[int]:
        await asyncio.sleep(0.003 * i)
        return [t.id for t in await engine.generate(items[i], sampling)]

    return list(await asyncio.gather(*(one(i) for i in range(len(items)))))


@pytest.mark.parametrize("runtime", ["torch", "ort", "openvino"])
def test_padded_batch_forward_matches_each_row_alone(decoders, runtime):
    """Left padding with mask 0 (prefill, then a cached step): the ONNX export honours the mask like torch."""
    dec = decoders[runtime]
    a, b = prompts()[2], prompts()[3]
    width = len(b)
    ids = np.array([[0] * (width - len(a)) + a, b])
    mask = (np.arange(width) >= np.array([[width - len(a)], [0]])).astype(np.int64)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits, past = dec.forward(ids, mask, pos, None)
    step, _ = dec.forward(
        np.array([[7], [9]]), np.pad(mask, ((0, 0), (0, 1)), constant_values=1), np.array([[len(a)], [width]]), past
    )
    for row, (prompt, token) in enumerate([(a, 7), (b, 9)]):
        solo = np.array([prompt])
        want, _ = dec.forward(solo, np.ones_like(solo), np.arange(len(prompt))[None], None)
        np.testing.assert_allclose(logits[row], want[0], atol=1e-4)
        longer = np.array([prompt + [token]])
        want, _ = dec.forward(longer, np.ones_like(longer), np.arange(len(prompt) + 1)[None], None)
        np.testing.assert_allclose(step[row], want[0], atol=1e-4)


@pytest.mark.parametrize("runtime", ["torch", "ort", "openvino"])
def test_concurrent_greedy_streams_match_each_prompt_alone_and_share_steps(decoders, runtime):
    dec = decoders[runtime]
    items = prompts()

    async def main():
        engine = Engine(dec, eos_ids=[], max_batch=4)  # 6 prompts: some wait for a slot
        got = await staggered(engine, items, Sampling(NEW, temperature=0))
        stats = engine.stats()
        await engine.close()
        return got, stats

    got, stats = asyncio.run(main())
    assert got == [alone(dec, p) for p in items]
    assert stats["tokens"] == NEW * len(items)
    assert 1 < stats["max_batch_seen"] <= 4
    assert stats["steps"] < stats["tokens"]
    assert stats["active"] == stats["waiting"] == 0


def test_seeded_sampling_is_the_same_alone_and_batched(decoders):
    dec = decoders["torch"]
    items = prompts()
    sampling = Sampling(NEW, temperature=0.9, top_p=0.95, seed=11)

    async def main():
        engine = Engine(dec, eos_ids=[])
        solo = [t.id for t in await engine.generate(items[1], sampling)]
        batched = await staggered(engine, items, sampling)
        other = [t.id for t in await engine.generate(items[1], Sampling(NEW, temperature=0.9, top_p=0.95, seed=12))]
        narrow = [t.id for t in await engine.generate(items[1], Sampling(NEW, temperature=1.5, top_p=1e-6, seed=5))]
        await engine.close()
        return solo, batched, other, narrow

    solo, batched, other, narrow = asyncio.run(main())
    assert batched[1] == solo
    assert other != solo
    assert narrow == alone(dec, items[1])  # only the most likely token survives a tiny top_p


def test_temperature_and_top_p_shape_the_distribution():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))

    def counts(**settings) -> np.ndarray:
        sampler = Sampler(Sampling(1, seed=0, **settings))
        return np.bincount([sampler.pick(logits) for _ in range(2000)], minlength=4) / 2000

    plain = counts()
    np.testing.assert_allclose(plain, [0.4, 0.3, 0.2, 0.1], atol=0.04)
    assert counts(temperature=0.3)[0] > 0.6 > plain[0]  # colder: the mode dominates
    assert counts(temperature=5.0)[3] > 0.18 > plain[3]  # hotter: flatter
    nucleus = counts(top_p=0.6)  # the fewest tokens reaching 0.6: ids 0 and 1, renormalised
    assert nucleus[2] == nucleus[3] == 0 and abs(nucleus[0] - 4 / 7) < 0.04
    assert counts(temperature=0.0)[0] == 1.0


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_a_consumer_that_stops_frees_its_slot_and_the_others_finish(decoders, how):
    dec = decoders["ort"]
    items = prompts()[:3]

    async def main():
        engine = Engine(dec, eos_ids=[])
        seen: list[int] = []
        quitter = engine.stream(items[0], Sampling(40, temperature=0))

        async def consume():
            async for token in quitter:
                seen.append(token.id)
                if how == "aclose" and len(seen) == 3:
                    break
            await quitter.aclose()

        task = asyncio.create_task(consume())
        others = [asyncio.create_task(engine.generate(p, Sampling(30, temperature=0))) for p in items[1:]]
        while len(seen) < 3:
            await asyncio.sleep(0.001)
        if how == "cancel":  # a client that disconnects: the task awaiting its next token is cancelled
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert engine.stats()["active"] == 2
        steps = engine.stats()["steps"]
        while engine.stats()["steps"] < steps + 2:
            await asyncio.sleep(0.001)
        rows = len(engine._batch.rows)
        done = [[t.id for t in await o] for o in others]
        await engine.close()
        return seen, rows, done

    seen, rows, done = asyncio.run(main())
    assert len(seen) >= 3 and seen == alone(dec, items[0], len(seen))
    assert rows == 2
    assert done == [alone(dec, p, 30) for p in items[1:]]


def test_finish_stop_on_eos_and_length_on_max_tokens(decoders):
    dec = decoders["torch"]
    prompt = prompts()[3]
    greedy = alone(dec, prompt)
    eos = greedy[4]
    first = greedy.index(eos)

    async def main():
        engine = Engine(dec, eos_ids=[eos, 10_000])
        stopped = await engine.generate(prompt, Sampling(NEW, temperature=0))
        capped = await Engine(dec, eos_ids=[]).generate(prompt, Sampling(5, temperature=0))
        await engine.close()
        return stopped, capped

    stopped, capped = asyncio.run(main())
    assert [t.id for t in stopped] == greedy[: first + 1]
    assert [t.finish for t in stopped] == [None] * first + ["stop"]
    assert [t.id for t in capped] == greedy[:5]
    assert [t.finish for t in capped] == [None] * 4 + ["length"]


@pytest.mark.parametrize(
    "prompt, sampling, words",
    [
        ([1] * 10, Sampling(5), ["prompt of 10 tokens", "max_tokens 5", "context 12"]),
        ([1, 2], Sampling(0), ["max_tokens", "0"]),
        ([1, 2], Sampling(3, temperature=-0.5), ["temperature", "-0.5"]),
        ([1, 2], Sampling(3, top_p=0.0), ["top_p", "0.0"]),
        ([1, 2], Sampling(3, top_p=1.5), ["top_p", "1.5"]),
        ([1, 2], Sampling(3, seed=-1), ["seed", "-1"]),
        ([], Sampling(3), ["prompt"]),
        ([1, -4], Sampling(3), ["prompt", "-4"]),
        ([1, 5000], Sampling(3), ["prompt", "5000"]),
    ],
)
def test_bad_requests_are_one_line_value_errors_and_the_engine_keeps_serving(decoders, prompt, sampling, words):
    dec = decoders["torch"]

    async def main():
        engine = Engine(dec, eos_ids=[], context=12)
        with pytest.raises(ValueError) as excinfo:
            await engine.generate(prompt, sampling)
        served = await engine.generate([1, 2, 3], Sampling(4, temperature=0))
        await engine.close()
        return excinfo.value, served

    error, served = asyncio.run(main())
    assert "\n" not in str(error) and all(w in str(error) for w in words), str(error)
    assert len(served) == 4
