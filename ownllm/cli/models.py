"""`ownllm models | doctor | generate | chat`: the registry, this machine, and talking to a model."""
from __future__ import annotations

from ownllm.cli.common import add_engine_arg, add_gen_args, add_model_args, gen_kwargs, print_table


def cmd_models(args) -> int:
    from ownllm.models.registry import MODELS, TRIED, format_params, is_available_here

    rows = [("alias", "hub id", "params", "context", "licence", "template", "here", "tried here")]
    for s in MODELS.values():
        here = ("yes (embedded)" if s.embedded else "yes (cache)") if is_available_here(s) else "no"
        rows.append((s.alias, s.hub_id, format_params(s.params), f"{s.context:,}", s.licence,
                     "none (base)" if s.base else s.template, here, TRIED.get(s.architecture, "not tried")))
    print_table(rows)
    print("\nAlso accepted: a local Hugging Face folder, a .gguf file, or a hub id (org/name).\n"
          "Base models ship no chat template: ownllm picks one their vocabulary holds and records it in the run.\n"
          "Gemma 3 4B and larger read images too: ownllm trains text-only models (gemma3-270m, gemma3-1b).\n"
          "Gemma models are under Google's Gemma Terms of Use (https://ai.google.dev/gemma/terms).")
    return 0


def cmd_doctor(args) -> int:
    from ownllm.planning.doctor import report

    print(report())
    return 0


def cmd_generate(args) -> int:
    from ownllm.models.generation import GenerationSettings
    from ownllm.models.load import load_model

    kwargs = gen_kwargs(args)
    GenerationSettings.build(**kwargs)  # report bad values before the model loads
    model = load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code, merge=not args.no_merge)
    for piece in model.stream(args.prompt, system_prompt=args.system, chat=False if args.raw else None, **kwargs):
        print(piece, end="", flush=True)
    print()
    return 0


CHAT_HELP = """commands:
  /good          the last answer was good          /bad           the last answer was bad
  /better TEXT   a better answer to the last question (saved; the conversation goes on from it)
  /reset         clear the conversation            /system TEXT   set the system prompt (clears too)
  /help          this list                         /exit          quit"""


def cmd_chat(args) -> int:
    from ownllm.data.feedback import feedback_path
    from ownllm.models.generation import GenerationSettings
    from ownllm.serving.engines import describe, load_engine

    kwargs = gen_kwargs(args)
    GenerationSettings.build(**kwargs)
    model, chosen = load_engine(args.model, args.engine, device=args.device, dtype=args.dtype,
                                merge=not args.no_merge, allow_pickle=args.allow_pickle,
                                trust_remote_code=args.trust_remote_code)
    print(describe(chosen))
    saving = _Feedback(args.model, feedback_path(args.model, args.feedback))
    system, history = args.system, []
    print(f"{model.name} — type a message; /good, /bad or /better TEXT on an answer"
          + (f" (kept in {saving.path})" if saving.path else "") + "; /help lists the commands, /exit quits.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/help":
            print(CHAT_HELP)
            continue
        if line == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        command, _, text = line.partition(" ")
        if command in ("/good", "/bad", "/better"):
            print(saving.say(history, system, command[1:], text.strip()))
            continue
        history.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        answer = ""
        for piece in model.stream(history, system_prompt=system, **kwargs):
            answer += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": answer})


class _Feedback:
    """The chat's /good, /bad and /better: rows for RUN/feedback.jsonl (or --feedback FILE)."""

    def __init__(self, model: str, path: str | None):
        self.model, self.path = model, path

    def say(self, history: list, system: str | None, kind: str, text: str) -> str:
        from ownllm.data.feedback import LABELS, Feedback, model_id, record
        from ownllm.errors import OwnLLMError

        if not self.path:
            return "(feedback is kept in a run directory: chat with one, or start with --feedback FILE)"
        if not history or history[-1]["role"] != "assistant":
            return "(no answer yet to say something about)"
        if kind == "better" and not text:
            return "(write the better answer after it: /better TEXT)"
        asked = ([{"role": "system", "content": system}] if system else []) + history[:-1]
        label = kind if kind in LABELS else None
        try:
            record(self.path, Feedback(messages=asked, answer=history[-1]["content"], label=label,
                                       better=text if kind == "better" else None, model=model_id(self.model),
                                       source="chat"))
        except OwnLLMError as e:
            return f"(not saved: {e})"
        if kind == "better":
            history[-1] = {"role": "assistant", "content": text}
            return f"(better answer saved in {self.path}; the conversation goes on from it)"
        return f"(saved as {kind} in {self.path})"


def register(sub) -> None:
    from ownllm.models.registry import DEFAULT_MODEL

    p = sub.add_parser("models", help="list the model registry and what is available here")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("doctor", help="check this machine: python, torch, GPU, RAM, disk, packages")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("model", help=f"alias (e.g. {DEFAULT_MODEL}), run dir, HF folder, .gguf file or hub id")
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="plain continuation, no chat template")
    add_gen_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a model in the terminal (/good, /bad, /better TEXT, /help)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    p.add_argument("--feedback", metavar="FILE",
                   help="where /good, /bad and /better rows go (default: RUN/feedback.jsonl when chatting with a run)")
    add_gen_args(p)
    add_model_args(p)
    add_engine_arg(p)
    p.set_defaults(func=cmd_chat)
