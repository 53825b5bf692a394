"""Grounded question–answer synthesis with a teacher model, and the checks that keep only what the
document supports.

A teacher is any OpenAI-compatible ``/v1`` endpoint (Ollama, vLLM, a hosted API, ``ownllm serve``)
or a model run in this process. Per chunk it is asked, in the chunk's language, for pairs with an
exact supporting quote, as JSON. A pair is kept only when its quote is in the chunk (whitespace and
punctuation normalised), its answer is supported by the quote (every number in it, and most of its
words, are in the quote), its question stands on its own and is not a near-duplicate of a kept one;
``judge`` adds a scoring pass with a written rubric. Teacher answers are cached by teacher, prompt
and chunk, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata

from ownllm.data.dedup import _shingles, jaccard
from ownllm.data.documents import Chunk, is_chinese
from ownllm.errors import DataError

PROMPT_VERSION = "1"
_PROMPTS = {
    "en": ("You write training data from documents. Reply with JSON only.",
           "From the passage below, write up to {n} question-answer pairs that a customer or colleague could "
           "ask and the passage answers. For each pair give 2 or 3 different phrasings of the question, a short "
           "answer in full sentences, and the exact sentence of the passage that supports the answer, copied "
           "word for word. Questions must make sense on their own (never 'the passage' or 'the text').\n"
           'Reply as {{"pairs": [{{"questions": ["...", "..."], "answer": "...", "quote": "..."}}]}}\n\n'
           "Section: {section}\nPassage:\n{text}"),
    "zh": ("你根据文档编写训练数据。只用 JSON 回答。",
           "根据下面的段落，写出最多 {n} 组问答：客户或同事可能会问、且段落能回答的问题。每组给出 2 到 3 种不同的"
           "问法、一个完整句子的简短回答，以及段落中支持该回答的原句（逐字照抄）。问题必须独立成立（不要说“段落”“文中”）。\n"
           '回答格式：{{"pairs": [{{"questions": ["...", "..."], "answer": "...", "quote": "..."}}]}}\n\n'
           "章节：{section}\n段落：\n{text}"),
}
_RETRY = {"en": "That reply was not the JSON asked for. Reply with the JSON object only.",
          "zh": "上面的回答不是要求的 JSON。只回复 JSON 对象。"}
JUDGE_RUBRIC = ("Score this question-answer pair from 1 to 10 against the quote it was written from:\n"
                "- 10: the quote fully answers the question, the answer says exactly what the quote says, and the "
                "question is natural and makes sense without the document;\n"
                "- 7: correct and supported, but wordy or slightly unnatural;\n"
                "- 4: partly supported, or the question needs the document to make sense;\n"
                "- 1: wrong, unsupported or not a question.\n"
                'Reply with JSON only: {{"score": N, "reason": "..."}}\n\n'
                "Quote: {quote}\nQuestion: {question}\nAnswer: {answer}")
REASONS = ("malformed_json", "incomplete", "quote_not_in_source", "quote_too_short", "answer_not_supported",
           "not_self_contained", "duplicate_question", "judge_below_threshold")
_DEICTIC = re.compile(r"\b(?:the|this) (?:passage|text|document|section|excerpt)\b|文中|本文|该段|段落中|上文|这段",
                      re.I)


class TeacherError(DataError):
    """The teacher cannot be used at all: unreachable, refusing, or answering nothing usable."""


# -- the checks ---------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """For matching a quote: NFKC, lower case, punctuation and whitespace removed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not (c.isspace() or unicodedata.category(c)[0] in "PS"))


_NUM = re.compile(r"(?<![\d.,:])\d+(?:[.,:]\d+)*")
# Chinese numerals are numbers when they hold a 十/百/千/万/亿/两 or run into a measure word (三天 / 三十天).
_ZH_NUM = re.compile(r"[零〇一二两三四五六七八九十百千万亿]*[十百千万亿两][零〇一二两三四五六七八九十百千万亿]*"
                     r"|[零〇一二三四五六七八九]+(?=[天日周月年个号点分秒次元块人岁倍层楼间张件])")
_STOP = set("the and for are was were with that this from have has had not but you your can will does did "
            "what which when where who how why its their there they them then than into onto also only".split())
# A negation and what it negates: the next content word (English, within three words) or the next two
# characters (Chinese). Negations are stop words to the overlap count, so they are checked on their own.
_NEGATION_EN = re.compile(r"^(?:not|no|never|cannot|without|nor|none|\w+n't)$")
_TOKENS_EN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_NEGATION_ZH = re.compile(r"没有|并非|无法|不能|不会|不是|不可|不得|不用|不要|未能|[不没无未非别勿]")
MIN_QUOTE_CHARS = {"zh": 6, "en": 15}  # normalised: "Opens at 9" (8) says too little to check an answer against


def _numbers(text: str) -> set[str]:
    """The numbers of ``text`` as whole tokens ("30" does not hold "3"; "1,000" is "1000")."""
    t = unicodedata.normalize("NFKC", text)
    nums = {re.sub(r",(?=\d{3}\b)", "", n) for n in _NUM.findall(t)}
    return nums | set(_ZH_NUM.findall(t))


def _units(text: str) -> set[str]:
    """Content units: Latin words of 3+ letters (not stop words; a plural's "s" dropped), or CJK character
    pairs (none across a negation)."""
    plain, negated = _stated(text)
    return plain | negated


def _stated(text: str) -> tuple[set[str], set[str]]:
    """(what ``text`` states plainly, what it only negates) as content units: ``我们周日不开门`` negates 开门,
    ``the store is not open`` negates open; a unit both stated and negated somewhere counts as stated."""
    t = unicodedata.normalize("NFKC", text).lower()
    plain, negated = set(), set()
    if is_chinese(t):
        han, negated_at = "", set()
        for piece in re.split(f"({_NEGATION_ZH.pattern})", t):
            if _NEGATION_ZH.fullmatch(piece or "-"):
                negated_at.add(len(han))
                continue
            han += "".join(c for c in piece if c.isalpha())
        for i in range(len(han) - 1):
            if i + 1 not in negated_at:  # 周日|不|开门: no 日开
                (negated if i in negated_at else plain).add(han[i:i + 2])
    else:
        pending = 0
        for w in _TOKENS_EN.findall(t):
            if _NEGATION_EN.match(w):
                pending = 3
            elif len(w) >= 3 and w not in _STOP and "'" not in w:
                w = w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith("ss") else w
                (negated if pending else plain).add(w)
                pending = 0
            else:
                pending = max(0, pending - 1)
    return plain, negated - plain


def _contradicts(answer: str, quote: str) -> bool:
    """One of them negates what the other states (周日不开门 / 周日开门; not open / open)."""
    (plain_a, neg_a), (plain_q, neg_q) = _stated(answer), _stated(quote)
    return bool(neg_q & plain_a or neg_a & plain_q)


def supported(answer: str, quote: str, share: float = 0.5) -> bool:
    """Every number of the answer is one of the quote's (whole numbers, Chinese numerals too), neither
    negates what the other states, and at least ``share`` of the answer's content units are the quote's."""
    if not _numbers(answer) <= _numbers(quote) or _contradicts(answer, quote):
        return False
    units = _units(answer)
    return not units or len(units & _units(quote)) >= share * len(units)


def check_pair(pair: dict, chunk: Chunk) -> str | None:
    """Why a proposed pair (questions, answer, quote) is rejected, or None to keep it."""
    if not pair["questions"] or not pair["answer"] or not pair["quote"]:
        return "incomplete"
    quote = normalise(pair["quote"])
    if quote not in normalise(chunk.text):
        return "quote_not_in_source"
    if len(quote) < MIN_QUOTE_CHARS["zh" if is_chinese(pair["quote"]) else "en"]:
        return "quote_too_short"
    if not supported(pair["answer"], pair["quote"]):
        return "answer_not_supported"
    if all(_DEICTIC.search(q) for q in pair["questions"]):
        return "not_self_contained"
    return None


class QuestionIndex:
    """Kept questions; a new one whose character shingles overlap a kept one's this much is a duplicate."""

    def __init__(self, threshold: float = 0.7):
        self.threshold, self.kept = threshold, []

    def duplicate(self, question: str) -> bool:
        sh = _shingles(question)
        return any(jaccard(sh, k) >= self.threshold for k in self.kept)

    def add(self, question: str) -> None:
        self.kept.append(_shingles(question))


# -- parsing ------------------------------------------------------------------------------------
def parse_pairs(text: str) -> list[dict] | None:
    """The pairs in a teacher's reply, or None when it holds no JSON of the asked shape. Accepts code
    fences, text around the JSON, a bare list, and the usual key spellings."""
    value = _first_json(text)
    if isinstance(value, dict):
        value = next((value[k] for k in ("pairs", "qa", "questions", "items", "data") if isinstance(value.get(k), list)),
                     [value] if any(k in value for k in ("question", "questions", "q")) else None)
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if not isinstance(item, dict):
            continue
        qs = item.get("questions") or item.get("question") or item.get("q") or []
        qs = [qs] if isinstance(qs, str) else [q for q in qs if isinstance(q, str)] if isinstance(qs, list) else []
        answer = item.get("answer") or item.get("a") or ""
        quote = item.get("quote") or item.get("evidence") or item.get("support") or ""
        out.append({"questions": [q.strip() for q in qs if q.strip()],
                    "answer": answer.strip() if isinstance(answer, str) else "",
                    "quote": quote.strip() if isinstance(quote, str) else ""})
    return out if out else None


def _first_json(text: str):
    text = re.sub(r"```(?:json)?", "", text or "")
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text[m.start():])[0]
        except ValueError:
            continue
    return None


def has_no_pairs(text: str) -> bool:
    """The reply is JSON that lists no pairs: the chunk has nothing to ask (not a malformed reply)."""
    value = _first_json(text)
    if isinstance(value, dict):
        value = next((value[k] for k in ("pairs", "qa", "questions", "items", "data") if isinstance(value.get(k), list)),
                     None)
    return isinstance(value, list) and not value


def parse_score(text: str) -> int | None:
    value = _first_json(text)
    if isinstance(value, dict) and isinstance(value.get("score"), (int, float)):
        return int(value["score"])
    m = re.search(r"\b(10|[1-9])\s*(?:/\s*10)?\b", text or "")
    return int(m.group(1)) if m else None


# -- prompts and the cache ----------------------------------------------------------------------
def chunk_messages(chunk: Chunk, per_chunk: int) -> list[dict]:
    lang = "zh" if is_chinese(chunk.text) else "en"
    system, user = _PROMPTS[lang]
    section = " › ".join(chunk.headings) or os.path.basename(chunk.file)
    return [{"role": "system", "content": system},
            {"role": "user", "content": user.format(n=per_chunk, section=section, text=chunk.text)}]


def retry_messages(messages: list[dict], reply: str) -> list[dict]:
    lang = "zh" if is_chinese(messages[-1]["content"]) else "en"
    return messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": _RETRY[lang]}]


def judge_messages(pair: dict, question: str) -> list[dict]:
    return [{"role": "user", "content": JUDGE_RUBRIC.format(quote=pair["quote"], question=question,
                                                            answer=pair["answer"])}]


class AnswerCache:
    """Teacher replies on disk, one file per (teacher, prompt): a rerun asks the teacher nothing it
    answered before."""

    def __init__(self, folder: str | None):
        self.folder = folder

    def key(self, teacher_id: str, messages: list[dict]) -> str:
        blob = json.dumps([PROMPT_VERSION, teacher_id, messages], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], key + ".json")

    def get(self, key: str) -> dict | None:
        if not self.folder or not os.path.exists(self._path(key)):
            return None
        try:
            with open(self._path(key), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # a torn write from an interrupted run: ask again

    def put(self, key: str, value: dict) -> None:
        if not self.folder:
            return
        from ownllm.utils import atomic_write

        os.makedirs(os.path.dirname(self._path(key)), exist_ok=True)
        atomic_write(self._path(key), json.dumps(value, ensure_ascii=False))


# -- teachers -----------------------------------------------------------------------------------
class HttpTeacher:
    """An OpenAI-compatible chat-completions endpoint. Retries 429/5xx and dropped connections with
    exponential backoff (honouring Retry-After); fails with one message when it cannot be used."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 300,
                 retries: int = 5, backoff: float = 1.0):
        import httpx

        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)
        self.retries, self.backoff = retries, backoff
        self.model = model  # None: the server's first model, asked for on the first request
        self.json_mode = True
        self.id = f"{self.url}|{model or ''}"

    def _first_model(self) -> str:
        response = self._request("GET", "/models")
        models = [m.get("id") for m in response.get("data", []) if isinstance(m, dict)]
        if not models:
            raise TeacherError(f"the teacher at {self.url} lists no models", hint="name one with --teacher-model")
        return models[0]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self.client.request(method, self.url + path, json=body)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise TeacherError(f"the teacher at {self.url} is unreachable ({type(e).__name__}: {e})",
                                       hint="start it (e.g. `ownllm serve MODEL`, `ollama serve`) or check --teacher")
                time.sleep(self.backoff * 2 ** attempt)
                continue
            if r.status_code == 429 or r.status_code >= 500:
                if attempt == self.retries:
                    raise TeacherError(f"the teacher at {self.url} kept failing: HTTP {r.status_code} "
                                       f"after {self.retries + 1} tries", hint="try again later, or lower --concurrency")
                wait = r.headers.get("retry-after", "")
                time.sleep(min(float(wait), 60) if wait.replace(".", "", 1).isdigit() else self.backoff * 2 ** attempt)
                continue
            if r.status_code >= 400:
                return {"_error": r.status_code, "_text": r.text[:300]}
            try:
                return r.json()
            except ValueError:
                raise TeacherError(f"the teacher at {self.url}{path} did not answer in JSON",
                                   hint="give the server's /v1 address, e.g. http://localhost:11434/v1") from None
        raise AssertionError("unreachable")

    def complete(self, messages: list[dict], max_tokens: int) -> tuple[str, dict]:
        self.model = self.model or self._first_model()
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        reply = self._request("POST", "/chat/completions", body)
        if "_error" in reply and "response_format" in body and reply["_error"] in (400, 422):
            self.json_mode = False  # a server without response_format: plain text, parsed robustly
            return self.complete(messages, max_tokens)
        if "_error" in reply:
            context = "context" in reply["_text"]
            raise TeacherError(f"the teacher at {self.url} refused: HTTP {reply['_error']} {reply['_text']}",
                               hint="lower --chunk-tokens (the prompt is longer than the teacher's context)" if context
                               else "check --teacher-model and the key (--teacher-key-env)")
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"the teacher at {self.url} answered without choices[0].message",
                               hint="is this an OpenAI-compatible /v1 endpoint?") from None
        usage = reply.get("usage") or {}
        return text, {"prompt_tokens": usage.get("prompt_tokens", 0),
                      "completion_tokens": usage.get("completion_tokens", 0)}


class LocalTeacher:
    """A model loaded in this process (an alias, a folder or a run), greedy. One request at a time."""

    def __init__(self, name: str):
        import threading

        from ownllm.models.load import fingerprint, load_model

        self.model = load_model(name)
        self.id = f"local|{fingerprint(name)}"
        self.lock = threading.Lock()

    def complete(self, messages: list[dict], max_tokens: int) -> tuple[str, dict]:
        with self.lock:
            prompt = self.model.render_chat(messages)
            text = self.model.chat(messages, temperature=0, max_new_tokens=max_tokens)
            tok = self.model.tokenizer
            return text, {"prompt_tokens": len(tok(prompt, add_special_tokens=False)["input_ids"]),
                          "completion_tokens": len(tok(text, add_special_tokens=False)["input_ids"])}


def make_teacher(spec: str, api_key_env: str | None = None, model: str | None = None):
    """``--teacher``: an http(s) URL → :class:`HttpTeacher`, anything else → a model in this process."""
    if spec.startswith(("http://", "https://")):
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise TeacherError(f"--teacher-key-env {api_key_env}: that environment variable is not set",
                                   hint=f"export {api_key_env}=YOUR_KEY")
        return HttpTeacher(spec, key, model)
    return LocalTeacher(spec)
