"""The `ppl-ecmh` command line. Bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import sys

from ppl_ecmh.errors import PplEcmhError


def _cut_param(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    from ppl_ecmh.runner import SAMPLERS

    parser = argparse.ArgumentParser(
        prog="ppl-ecmh",
        description="Sample from the power distribution p(x)^alpha of a language model with "
        "Metropolis-Hastings (random-cut or entropy-cut suffix resampling).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="run chains of one sampler on one prompt",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("--model", default="smollm2-135m",
                        help="registered name, GGUF file, Hugging Face folder or hub id")
    source = sample.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", help="a file whose whole text is the prompt")
    sample.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                        help="wrap the prompt in the model's chat template")
    sample.add_argument("--sampler", choices=SAMPLERS, default="entropy-cut")
    sample.add_argument("--alpha", type=float, default=4.0, help="sharpening exponent of p(x)^alpha")
    sample.add_argument("--tau", type=float, default=None, help="proposal temperature (default 1/alpha)")
    sample.add_argument("--cut", default="entropy_jump",
                        help="cut distribution for entropy-cut/blockwise: uniform, entropy, entropy_jump, mixture")
    sample.add_argument("--cut-param", type=_cut_param, action="append", default=[], metavar="NAME=VALUE",
                        help="cut parameter, e.g. power=4, beta=1, eps=0.1 (repeatable)")
    sample.add_argument("--chains", type=int, default=4)
    sample.add_argument("--draws", type=int, default=10, help="draws kept per chain (MH steps, or blocks)")
    sample.add_argument("--warmup", type=int, default=0, help="draws discarded first")
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--block-size", type=int, default=192, help="blockwise: tokens per block")
    sample.add_argument("--mcmc-steps", type=int, default=10, help="blockwise: MH steps per block")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(handler=_sample)

    models = commands.add_parser("models", help="list the registered embedded models")
    models.set_defaults(handler=_models)
    return parser


def _models(args) -> None:
    from ppl_ecmh.lm.registry import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        try:
            where = str(model.locate())
        except PplEcmhError:
            where = f"not installed: {model.install_command}"
        print(f"{model.name:16s} {model.description}\n{'':16s} {where}")


def _sample(args) -> None:
    import numpy as np

    from ppl_ecmh.lm import load_model
    from ppl_ecmh.runner import SamplerSpec, run_sampler

    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise PplEcmhError(f"cannot read --prompt-file: {error}") from None
    else:
        text = args.prompt
    spec = SamplerSpec(args.sampler, tau=args.tau, cut=args.cut, cut_params=tuple(args.cut_param),
                       block_size=args.block_size, num_mcmc_steps=args.mcmc_steps)
    spec.make_kernel()  # validate the sampler options before loading the model
    model = load_model(args.model, dtype=args.dtype)
    prompt = model.encode(text, chat=args.chat)
    model.check_fits(len(prompt), args.max_new_tokens)
    run = run_sampler(model.lm, prompt, spec, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                      num_chains=args.chains, num_draws=args.draws, num_warmup=args.warmup, seed=args.seed,
                      progress=not args.no_progress)
    log_target = run.stats["log_target"]
    chain, draw = np.unravel_index(np.argmax(log_target), log_target.shape)
    length = int(run.stats["length"][chain, draw])
    print(f"\nbest completion (chain {chain}, draw {draw}, alpha*log p = {log_target[chain, draw]:.2f}):")
    print(model.decode(run.tokens[chain, draw, :length]))
    print(f"\n{'chain':>5} {'acceptance':>10} {'mean cut':>8} {'mean len':>8} {'tokens':>7} {'final alpha*log p':>18}")
    for c in range(run.tokens.shape[0]):
        print(f"{c:5d} {run.stats['accepted'][c].mean():10.2f} {run.stats['cut'][c].mean():8.1f} "
              f"{run.stats['length'][c].mean():8.1f} {int(run.stats['num_generated'][c].sum()):7d} "
              f"{log_target[c, -1]:18.2f}")
    seconds = run.wall_time.sum()
    print(f"\n{run.total_tokens} tokens generated in {seconds:.1f} s ({run.total_tokens / max(seconds, 1e-9):.1f} tokens/s)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (PplEcmhError, ValueError) as error:
        print(f"ppl-ecmh: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
