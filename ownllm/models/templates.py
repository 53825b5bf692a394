"""Named chat templates, for base models that ship none or to override a model's own, and the one
function that renders a conversation.

They are Jinja strings rendered by ``tokenizer.apply_chat_template``, which uses Jinja's
immutable sandbox, so a template cannot reach Python objects. Each one renders the
assistant turn as ``prefix(messages[:i], add_generation_prompt=True) + content + end``, which
is what :mod:`ownllm.data.render` relies on to find the tokens to train.
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}" + CHATML
)

LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA2 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' </s>' }}{% endif %}"
    "{% endfor %}"
)

DEEPSEEK = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

DEEPSEEK_R1 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

# Gemma's turns: the assistant is "model", and a system message has no turn of its own: it is folded into
# the first user turn, as Gemma's own template does. The base model's vocabulary already holds both markers.
GEMMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] | trim + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ (ns.system if message['role'] == 'user' else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% if message['role'] == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

TEMPLATES = {"chatml": CHATML, "qwen": QWEN, "llama3": LLAMA3, "llama2": LLAMA2, "gemma": GEMMA,
             "deepseek": DEEPSEEK, "deepseek-r1": DEEPSEEK_R1, "alpaca": ALPACA}

# For a model without a template (a base model): the first whose markers its vocabulary holds as single
# tokens, so that the end of a turn is one token the model learns to emit; else Alpaca, which ends on EOS.
_BY_VOCABULARY = (("<start_of_turn>", "gemma"), ("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"))
# Passed to every template: Qwen3's writes an empty <think></think> block and answers without reasoning.
TEMPLATE_ARGS = {"enable_thinking": False}


def get_template(name: str) -> str:
    from ownllm.errors import ConfigError

    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template '{name}'", hint=f"choose one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_name_for(tokenizer) -> str | None:
    """The named template a model without its own uses (None when its tokenizer has one)."""
    if getattr(tokenizer, "chat_template", None):
        return None
    vocab = tokenizer.get_vocab()
    return next((name for marker, name in _BY_VOCABULARY if marker in vocab), "alpaca")


def chat_template_for(tokenizer, name: str | None = None) -> str | None:
    """The template to use: a named one, else the tokenizer's own (None), else the one its vocabulary fits."""
    name = name or template_name_for(tokenizer)
    return get_template(name) if name else None


def render_chat(tokenizer, messages: list[dict], template: str | None = None, *,
                add_generation_prompt: bool = False) -> str:
    """The one way ownllm renders a conversation (training, evaluation, chat, serve, exports): ``template``
    (a Jinja string; None: :func:`chat_template_for`), with :data:`TEMPLATE_ARGS`. What a message says is
    text: a control token's spelling inside it (``<|im_end|>``, ``<end_of_turn>``) is defused first, so that
    a user cannot end their turn and write a system turn of their own."""
    controls = control_tokens(tokenizer)
    messages = [dict(m, content=defuse(m["content"], controls)) if isinstance(m.get("content"), str) else m
                for m in messages]
    return tokenizer.apply_chat_template(messages, chat_template=template or chat_template_for(tokenizer),
                                         tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **TEMPLATE_ARGS)


def control_tokens(tokenizer) -> "Controls":
    """The spellings the tokenizer turns into special tokens wherever they appear in text, cached per tokenizer
    object (a term added in training is not special; reading them again costs 20 ms for Gemma's vocabulary)."""
    cached = _CONTROLS.get(tokenizer)
    if cached is not None:
        return cached
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names = {n for n in set(getattr(tokenizer, "all_special_tokens", []) or []) |
             {t.content for t in added.values() if getattr(t, "special", False)} if len(n) > 1}
    controls = Controls(frozenset(n for n in names if _BRACKETED.fullmatch(n)),
                        tuple(sorted((n for n in names if not _BRACKETED.fullmatch(n)), key=len, reverse=True)))
    try:
        _CONTROLS[tokenizer] = controls
    except TypeError:  # not weakly referenceable: computed again next time
        pass
    return controls


@dataclass(frozen=True)
class Controls:
    bracketed: frozenset      # <...> and [...] spellings: found with one scan of the text
    other: tuple              # the rest (rare), longest first


_CONTROLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_BRACKETED = re.compile(r"<[^<>\n]{1,64}>|\[[^\[\]\n]{1,64}\]")
_CANDIDATES = re.compile(f"(?=({_BRACKETED.pattern}))")  # overlapping matches: "[<|im_end|>]" finds both
ZERO_WIDTH_SPACE = "\u200b"


def defuse(text: str, controls: Controls) -> str:
    """``text`` with every control-token spelling broken by a zero-width space after its first character:
    it reads the same and is tokenized as text (written here: tokenizers split special tokens out of text
    before any other step, and can only turn that off for a whole string, template markers included)."""
    if ("<" in text or "[" in text) and controls.bracketed:
        starts = sorted({m.start() for m in _CANDIDATES.finditer(text) if m.group(1) in controls.bracketed},
                        reverse=True)
        for at in starts:
            text = text[:at + 1] + ZERO_WIDTH_SPACE + text[at + 1:]
    for name in controls.other:
        if name in text:
            text = text.replace(name, name[0] + ZERO_WIDTH_SPACE + name[1:])
    return text


def turn_end_ids(tokenizer, template: str | None = None) -> list[int]:
    """The special token that closes an assistant turn in ``template`` (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>, Gemma's <end_of_turn>), with the tokenizer's end-of-sequence token: where generation stops."""
    text = render_chat(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "ANSWER"}],
                       template)
    after = text[text.rindex("ANSWER") + len("ANSWER"):]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ends = [t for t in tokenizer(after, add_special_tokens=False)["input_ids"] if t in special][:1]
    return list(dict.fromkeys(ends + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])))
