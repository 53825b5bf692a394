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


def cmd_chat(args) -> int:
    from ownllm.models.generation import GenerationSettings
    from ownllm.serving.engines import describe, load_engine

    kwargs = gen_kwargs(args)
    GenerationSettings.build(**kwargs)
    model, chosen = load_engine(args.model, args.engine, device=args.device, dtype=args.dtype,
                                merge=not args.no_merge, allow_pickle=args.allow_pickle,
                                trust_remote_code=args.trust_remote_code)
    print(describe(chosen))
    system, history = args.system, []
    print(f"{model.name} — type a message; /reset clears the conversation, /system TEXT sets the "
          "system prompt, /exit quits.")
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
        if line == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        history.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        answer = ""
        for piece in model.stream(history, system_prompt=system, **kwargs):
            answer += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": answer})


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

    p = sub.add_parser("chat", help="chat with a model in the terminal (/reset, /system, /exit)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    add_gen_args(p)
    add_model_args(p)
    add_engine_arg(p)
    p.set_defaults(func=cmd_chat)
