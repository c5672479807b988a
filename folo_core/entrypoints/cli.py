"""The ``folo`` command: ``generate``, ``serve``, ``plugins`` and ``quantize`` (more subcommands register here)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from folo_core.config import ConfigError, EngineConfig
from folo_core.models import CheckpointError
from folo_core.registry import PluginSelectionError

USER_ERRORS = (ConfigError, CheckpointError, PluginSelectionError, FileNotFoundError, ValueError)
DEFAULT_MAX_REQUEST_BODY_BYTES = 8 << 20  # folo serve --max-request-body-bytes


def _cmd_generate(args: argparse.Namespace) -> int:
    from folo_core.engine.llm import LLM
    from folo_core.sampling_params import SamplingParams

    llm = LLM(**EngineConfig.from_cli_args(args).flat())
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_tokens=args.max_tokens)
    tokenizer = llm.get_tokenizer()
    use_chat = not args.no_chat and tokenizer is not None and tokenizer.chat_template is not None
    prompts = [llm.render_chat([{"role": "user", "content": p}]) if use_chat else p for p in args.prompt]
    for output in llm.generate(prompts, params, use_tqdm=False):
        print(output.outputs[0].text.strip())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from folo_core.entrypoints.openai.api_server import run_server
    except ImportError as exc:  # the server's dependencies are the optional "serve" extra
        print(f"folo: error: folo serve needs the serve extra ({exc}): pip install 'folovllm[serve]'",
              file=sys.stderr)
        return 2
    return run_server(args)


def _cmd_plugins(args: argparse.Namespace) -> int:
    from folo_core.entrypoints.plugins_report import explain_report, plugins_report

    report = plugins_report()
    if args.explain:
        report["explain"] = explain_report(EngineConfig.from_cli_args(args))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for plugin in report["plugins"]:
        status = f"ERROR: {plugin['error']}" if plugin["error"] else ""
        print(f"{plugin['name']} ({plugin['distribution']} {plugin['version']}) {status}".rstrip())
        for kind, names in plugin["registered"].items():
            print(f"    {kind}: {', '.join(names)}")
    for kind, rows in report.get("explain", {}).items():
        print(f"\n{kind}:")
        for row in rows:
            mark = "->" if row["selected"] else "  "
            print(f"  {mark} {row['name']} (priority {row['priority']}, plugin {row['plugin']}): {row['why']}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from folo_core.default_model import default_model_path
    from folo_core.plugins import get_plugin_manager
    from folo_core.quantization import QuantizeOptions

    output = args.output_dir
    if Path(output).exists() and any(Path(output).iterdir()):
        raise ValueError(f"output directory {output!r} is not empty")
    model = args.model_dir or default_model_path()
    quantizer = get_plugin_manager().registry("quantizer").get(args.method).impl
    options = QuantizeOptions(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act, sym=not args.no_sym,
                              calibration_file=args.calibration, num_samples=args.num_samples)
    quantizer.quantize_checkpoint(model, output, options)
    print(f"wrote {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="folo", description="Folo: a plugin-architected LLM inference engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Generate text (default model: the embedded SmolLM2-135M-Instruct).")
    gen.add_argument("prompt", nargs="+", help="Prompt(s); each is sent as a chat user message.")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--no-chat", action="store_true", help="Send the prompt as raw text, without the chat template.")
    EngineConfig.add_cli_args(gen)
    gen.set_defaults(func=_cmd_generate)

    serve = sub.add_parser("serve", help="Run the OpenAI-compatible HTTP server (needs folovllm[serve]).")
    serve.add_argument("--host", default="127.0.0.1", help="Address to bind (default: localhost only).")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("FOLO_API_KEY"),
                       help="Require 'Authorization: Bearer KEY' on /v1 routes (default: $FOLO_API_KEY).")
    serve.add_argument("--served-model-name", default=None,
                       help="Model name clients must send (default: the --model value, or SmolLM2-135M-Instruct).")
    serve.add_argument("--trust-request-chat-template", action="store_true",
                       help="Let requests bring their own chat_template (a template is code: off by default).")
    serve.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                       help="Largest request body accepted; larger ones get a 413 (default: 8 MiB).")
    serve.add_argument("--tool-call-parser", default=None,
                       help="Tool parser plugin that reads calls out of the text (hermes, llama3_json, ...).")
    serve.add_argument("--enable-auto-tool-choice", action="store_true",
                       help='Allow tool_choice="auto": the model decides, the parser finds the calls.')
    serve.add_argument("--engine-core-in-process", action="store_true",
                       help="Run the engine core on a thread of the server process instead of a process of its "
                            "own (then HTTP handling and the step loop share one GIL).")
    serve.add_argument("--uvicorn-log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug", "trace"])
    EngineConfig.add_cli_args(serve)
    serve.set_defaults(func=_cmd_serve)

    plugins = sub.add_parser("plugins", help="List installed plugins and what they register.")
    plugins.add_argument("--json", action="store_true", help="Print JSON.")
    plugins.add_argument("--explain", action="store_true",
                         help="Show which implementation 'auto' picks here (for --model) and why others are not eligible.")
    EngineConfig.add_cli_args(plugins)
    plugins.set_defaults(func=_cmd_plugins)

    quantize = sub.add_parser("quantize", help="Quantize a local HF checkpoint (default model: the embedded SmolLM2).")
    quantize.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                          help="Checkpoint to quantize (default: the embedded SmolLM2).")
    quantize.add_argument("output_dir", metavar="OUTPUT_DIR", help="Where to write the quantized checkpoint.")
    quantize.add_argument("--method", default="gptq", help="Quantizer plugin (default: gptq).")
    quantize.add_argument("--bits", type=int, default=4)
    quantize.add_argument("--group-size", type=int, default=128, help="Inputs per scale/zero group; -1: one group.")
    quantize.add_argument("--desc-act", action="store_true", help="Quantize input channels in act-order (g_idx).")
    quantize.add_argument("--no-sym", action="store_true", help="Asymmetric quantization (a zero point per group).")
    quantize.add_argument("--calibration", metavar="FILE", default=None,
                          help="Calibration text: paragraphs separated by blank lines, or one sample per line "
                               "(default: a built-in English sample).")
    quantize.add_argument("--num-samples", type=int, default=128, help="Use at most this many calibration samples.")
    quantize.set_defaults(func=_cmd_quantize)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"folo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
