"""A tiny random causal language model folder (as ``save_pretrained`` writes it) with an offline tokenizer.

``tiny_llama`` writes a seeded ``LlamaForCausalLM`` (hidden 64, intermediate 128, 4 heads, 2 kv heads,
head_dim 16) as safetensors plus a byte-level BPE tokenizer trained here on a few hundred words of
English (vocabulary ~400, ``<|endoftext|>`` / ``<|im_start|>`` / ``<|im_end|>`` specials and SmolLM2's
``<|im_start|>role\\n...<|im_end|>`` chat template), so every LM test runs offline in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = """
The small model reads a sentence and guesses the next word. When the guess is right the loss is low,
and when it is wrong the loss is high. We train the model on many short documents about cats, dogs,
rivers, mountains, numbers and simple programs. A cat sat on the warm mat near the window while the
rain fell on the quiet town. The dog ran across the green park to catch a red ball, then it came back
and slept under the old tree. Rivers flow from the mountains to the sea, carrying water, stones and
stories of the places they pass. To add two numbers, write the first number, then the second, and
count them together; seven plus five is twelve. A list holds items in order, and a loop visits each
item once. Functions take inputs and return outputs, so a program is built from many small pieces
that each do one thing well. Please explain why the sky is blue: sunlight is scattered by the air,
and blue light is scattered more than red light. Write a short poem about the moon and the stars.
The teacher asked the students to summarize the story in three sentences, and they wrote about a
brave child who crossed a wide river to find a lost friend. Compression makes a model smaller and
faster: we can remove layers, shrink the hidden width, or store the weights with fewer bits. A
quantized model keeps most of its quality when the calibration data looks like the real inputs.
Distillation trains a student to copy the probabilities of a teacher, one token at a time. The
perplexity of a model tells how surprised it is by a text; lower is better. Every morning the baker
opens the shop, lights the oven and bakes fresh bread for the people of the village. In winter the
lake freezes and children skate on the ice, laughing as they fall and stand up again. Computers
store numbers as bits, and a byte holds eight bits. A good answer is short, clear and correct.
Thank you for asking; here is a simple plan with four steps: read, think, write and check.
"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on ``TEXT`` (deterministic), eos = bos = pad = ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in TEXT.splitlines() if line], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(folder: Path, layers: int = 4, tie: bool = True, **config) -> Path:
    """``folder`` holding a seeded random LlamaForCausalLM (safetensors) and ``tiny_tokenizer``; ``config``
    overrides LlamaConfig keys. The same arguments always write the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(config)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def varied_llama(folder: Path, scale: float = 10.0):
    """The tiny Llama (``tiny_llama(folder)``) loaded, with its matrices scaled up so greedy tokens vary
    (at init scale 0.02 it repeats one token)."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(tiny_llama(folder)).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return net
